//! The compute backends this build can train on, chosen at build time by Cargo features:
//!
//! - always: the ndarray CPU backend ([`CpuBackend`]);
//! - feature `cuda`: NVIDIA GPUs through CubeCL's CUDA runtime, with kernel fusion and
//!   autotuned kernels ([`CudaBackend`]);
//! - feature `wgpu`: any Vulkan (Linux), Metal (macOS) or DirectX 12 adapter through CubeCL's
//!   wgpu runtime, with fusion and autotune ([`WgpuBackend`]). Mesa's software Vulkan driver
//!   (llvmpipe) counts as an adapter, so this path runs on machines without a GPU.
//!
//! [`Device`] is what `train.device` names; [`probe`] finds out, before any training, whether
//! the adapter is there and what it is called.

use std::fmt;

/// The ndarray CPU training backend (the default, and the backend of the tests).
pub type CpuBackend = burn::backend::Autodiff<burn::backend::NdArray>;

/// The CUDA training backend: `Fusion<CubeBackend<CudaRuntime>>` under autodiff.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn::backend::Cuda>;

/// The wgpu training backend: `Fusion<CubeBackend<WgpuRuntime>>` under autodiff.
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Autodiff<burn::backend::Wgpu>;

/// A device `train.device` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU (ndarray).
    Cpu,
    /// CUDA device N.
    Cuda(usize),
    /// `None`: wgpu's default adapter (the highest-performance one; the environment
    /// variable `CUBECL_WGPU_DEFAULT_DEVICE` overrides it); `Some(n)`: discrete GPU n.
    Wgpu(Option<usize>),
}

impl Device {
    /// Parses `cpu`, `cuda`, `cuda:N`, `wgpu` or `wgpu:N`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let index = |rest: &str| rest.parse::<usize>().ok();
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "wgpu" => Ok(Self::Wgpu(None)),
            _ => match (s.strip_prefix("cuda:"), s.strip_prefix("wgpu:")) {
                (Some(n), _) if index(n).is_some() => Ok(Self::Cuda(index(n).unwrap_or(0))),
                (_, Some(n)) if index(n).is_some() => Ok(Self::Wgpu(index(n))),
                _ => Err(format!(
                    "expected \"cpu\", \"cuda\", \"cuda:N\", \"wgpu\" or \"wgpu:N\", got {s:?}"
                )),
            },
        }
    }

    /// The backend's name, as `unimod_build_info{backend}` reports it.
    pub fn backend(self) -> &'static str {
        match self {
            Self::Cpu => "ndarray",
            Self::Cuda(_) => "cuda",
            Self::Wgpu(_) => "wgpu",
        }
    }

    /// Whether this build was compiled with the backend (the `cuda` / `wgpu` features).
    pub fn compiled(self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Cuda(_) => cfg!(feature = "cuda"),
            Self::Wgpu(_) => cfg!(feature = "wgpu"),
        }
    }

    /// Whether the backend fuses kernels (the CubeCL backends of this crate always do).
    pub fn fusion(self) -> bool {
        !matches!(self, Self::Cpu)
    }

    /// The Cargo feature a build needs for this device, if any.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Self::Cpu => None,
            Self::Cuda(_) => Some("cuda"),
            Self::Wgpu(_) => Some("wgpu"),
        }
    }

    /// The burn device of the CUDA backend.
    #[cfg(feature = "cuda")]
    pub fn cuda(self) -> Option<burn::backend::cuda::CudaDevice> {
        match self {
            Self::Cuda(n) => Some(burn::backend::cuda::CudaDevice::new(n)),
            _ => None,
        }
    }

    /// The burn device of the wgpu backend.
    #[cfg(feature = "wgpu")]
    pub fn wgpu(self) -> Option<burn::backend::wgpu::WgpuDevice> {
        use burn::backend::wgpu::WgpuDevice;
        match self {
            Self::Wgpu(None) => Some(WgpuDevice::DefaultDevice),
            Self::Wgpu(Some(n)) => Some(WgpuDevice::DiscreteGpu(n)),
            _ => None,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Wgpu(None) => write!(f, "wgpu"),
            Self::Wgpu(Some(n)) => write!(f, "wgpu:{n}"),
        }
    }
}

/// The backends compiled into this build, e.g. `["ndarray", "wgpu"]`.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut out = vec!["ndarray"];
    if cfg!(feature = "cuda") {
        out.push("cuda");
    }
    if cfg!(feature = "wgpu") {
        out.push("wgpu");
    }
    out
}

/// What [`probe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adapter {
    /// A one-line description: the adapter's name and driver.
    pub name: String,
}

/// Finds the adapter `device` names, without training anything: an error when the build
/// lacks the backend (naming the feature) or no such adapter is present.
///
/// For wgpu the probe initialises the runtime of that device (the training that follows in
/// the same process reuses it); call it once per process and device, before any tensor is
/// created on it.
pub fn probe(device: Device) -> Result<Adapter, String> {
    if !device.compiled() {
        return Err(format!(
            "{device} needs a build with the `{}` feature (this build has: {})",
            device.feature().unwrap_or("?"),
            compiled_backends().join(", ")
        ));
    }
    match device {
        Device::Cpu => Ok(Adapter {
            name: format!("CPU ({} threads available)", std::thread::available_parallelism().map_or(1, |n| n.get())),
        }),
        Device::Cuda(n) => probe_cuda(n),
        Device::Wgpu(_) => probe_wgpu(device),
    }
}

#[cfg(feature = "cuda")]
fn probe_cuda(n: usize) -> Result<Adapter, String> {
    // cudarc loads the driver library at first use and panics when there is none: quiet the
    // panic hook meanwhile, so the answer is the one line below, not a panic report.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| -> Result<String, String> {
        let count = cudarc::driver::CudaContext::device_count().map_err(|e| format!("CUDA driver: {e}"))?;
        if n >= count.max(0) as usize {
            return Err(format!("no CUDA device {n} ({count} present)"));
        }
        let ctx = cudarc::driver::CudaContext::new(n).map_err(|e| format!("CUDA device {n}: {e}"))?;
        let name = ctx.name().map_err(|e| format!("CUDA device {n}: {e}"))?;
        let mem = ctx.total_mem().map_or(0, |m| m >> 20);
        Ok(format!("{name} (CUDA device {n}, {mem} MiB)"))
    });
    std::panic::set_hook(quiet);
    match result {
        Ok(Ok(name)) => Ok(Adapter { name }),
        Ok(Err(e)) => Err(e),
        Err(panic) => Err(format!("no CUDA driver: {}", panic_text(&panic))),
    }
}

#[cfg(not(feature = "cuda"))]
fn probe_cuda(_: usize) -> Result<Adapter, String> {
    unreachable!("checked by Device::compiled")
}

#[cfg(feature = "wgpu")]
fn probe_wgpu(device: Device) -> Result<Adapter, String> {
    use burn::backend::wgpu::{graphics::AutoGraphicsApi, init_setup, RuntimeOptions};
    let Some(wgpu) = device.wgpu() else {
        unreachable!("a wgpu device")
    };
    // cubecl panics when no adapter matches.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| {
        let setup = init_setup::<AutoGraphicsApi>(&wgpu, RuntimeOptions::default());
        let info = setup.adapter.get_info();
        format!("{} ({:?}, {:?}, driver {} {})", info.name, info.backend, info.device_type, info.driver, info.driver_info)
    });
    std::panic::set_hook(quiet);
    result
        .map(|name| Adapter { name })
        .map_err(|panic| format!("no wgpu adapter for {device}: {}", panic_text(&panic)))
}

#[cfg(not(feature = "wgpu"))]
fn probe_wgpu(_: Device) -> Result<Adapter, String> {
    unreachable!("checked by Device::compiled")
}

#[allow(dead_code)]
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("panic");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        for (s, d) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
            ("wgpu", Device::Wgpu(None)),
            ("wgpu:1", Device::Wgpu(Some(1))),
        ] {
            assert_eq!(Device::parse(s), Ok(d), "{s}");
        }
        assert_eq!(Device::Cuda(0).to_string(), "cuda:0");
        for bad in ["cuda:x", "gpu", "wgpu:", "CPU", "cuda:-1"] {
            assert!(Device::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_backend_missing_from_the_build_is_named() {
        for d in [Device::Cuda(0), Device::Wgpu(None)] {
            if !d.compiled() {
                let e = probe(d).expect_err("not compiled");
                assert!(e.contains(d.feature().unwrap_or("?")), "{e}");
            }
        }
        assert!(probe(Device::Cpu).is_ok());
    }
}
