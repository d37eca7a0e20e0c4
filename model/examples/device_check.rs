//! Device check for a GPU (used by `bench/gpu.sh`), also runnable on the CPU.
//!
//! 1. `compare`: a tiny model with a fixed batch, built on the CPU, saved, loaded on the
//!    target device; embeddings and three steps' losses must agree within 1e-3.
//! 2. `train`: `--steps` steps at `--size` on the target device at the shapes of
//!    `shared/bench/torch_unimo_step.py`; the loss must fall; prints ms/step, samples/s and
//!    device reads per step as JSON.
//!
//! The target device is CUDA when built with `--features cuda`, else wgpu's default adapter
//! with `--features wgpu`, else the CPU (so the logic is tested anywhere). Usage:
//! `cargo run --release -p unimod-model --features cuda --example device_check -- [--mode compare|train|both] [--size base] [--steps 300] [--batch 32]`

use std::time::Instant;

use unimod_model::backend::{probe, Device};
use unimod_model::{
    readback, Arch, CpuBackend as Cpu, Example, ModelConfig, ObjectiveWeights, ShapePolicy, SpecialTokens, TrainSettings,
    Trainer, VisualInput,
};

#[cfg(feature = "cuda")]
type Target = unimod_model::backend::CudaBackend;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
type Target = unimod_model::backend::WgpuBackend;
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
type Target = Cpu;

#[cfg(feature = "cuda")]
const TARGET: Device = Device::Cuda(0);
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
const TARGET: Device = Device::Wgpu(None);
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
const TARGET: Device = Device::Cpu;

fn target_device() -> burn::tensor::Device<Target> {
    #[cfg(feature = "cuda")]
    return TARGET.cuda().expect("cuda device");
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    return TARGET.wgpu().expect("wgpu device");
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    return Default::default();
}

const SPECIAL: SpecialTokens = SpecialTokens {
    pad: 1,
    cls: 0,
    sep: 2,
    mask: 3,
    img: 4,
};
const TEXT_LEN: usize = 32;
const OBJECTS: usize = 31;
const FEAT: usize = 192;
const VOCAB: usize = 8192;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// Deterministic pseudo-random numbers in [0, 1).
fn unit(i: u64) -> f32 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

fn pairs(n: usize, vocab: usize, feat: usize, seed: u64) -> Vec<Example> {
    (0..n as u64)
        .map(|p| {
            let base = seed * 1_000_003 + p * 10_007;
            let mut text = vec![SPECIAL.cls];
            text.extend((0..TEXT_LEN as u64 - 2).map(|i| 5 + (unit(base + i) * (vocab - 5) as f32) as u32));
            text.push(SPECIAL.sep);
            let features = (0..(OBJECTS * feat) as u64).map(|i| unit(base + 500 + i) * 2.0 - 1.0).collect();
            let locations = (0..OBJECTS as u64)
                .map(|i| {
                    let (x, y) = (unit(base + 7 * i) * 0.5, unit(base + 7 * i + 1) * 0.5);
                    let (w, h) = (0.1 + unit(base + 7 * i + 2) * 0.4, 0.1 + unit(base + 7 * i + 3) * 0.4);
                    [x, y, x + w, y + h, w * h]
                })
                .collect();
            Example {
                text: Some(text),
                image: Some(VisualInput {
                    dim: feat,
                    features,
                    locations,
                    class_probs: None,
                }),
                ..Example::default()
            }
        })
        .collect()
}

fn settings() -> TrainSettings {
    TrainSettings {
        text_buckets: vec![TEXT_LEN],
        object_buckets: vec![OBJECTS],
        shape_policy: if TARGET == Device::Cpu { ShapePolicy::Tight } else { ShapePolicy::Static },
        ..TrainSettings::default()
    }
}

fn cpu_settings() -> TrainSettings {
    TrainSettings {
        shape_policy: ShapePolicy::Tight,
        ..settings()
    }
}

fn max_rel_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs() / (1e-3 + x.abs().max(y.abs())))
        .fold(0.0, f32::max)
}

fn compare() -> Result<(), String> {
    let mut config = ModelConfig::preset(Arch::Unimo, "tiny", 300, 24, SPECIAL).map_err(|e| e.to_string())?;
    config.dropout = 0.0;
    let batch = pairs(4, 300, 24, 1);
    let cpu = Trainer::<Cpu>::new(config, cpu_settings(), Default::default()).map_err(|e| e.to_string())?;
    let state = cpu.save().map_err(|e| e.to_string())?;
    let mut cpu = cpu;
    let mut dev = Trainer::<Target>::load(&state, settings(), target_device()).map_err(|e| e.to_string())?;
    let texts: Vec<Vec<u32>> = batch.iter().filter_map(|e| e.text.clone()).collect();
    let images: Vec<VisualInput> = batch.iter().filter_map(|e| e.image.clone()).collect();
    let dt = max_rel_diff(&cpu.embed_texts(&texts), &dev.embed_texts(&texts));
    let di = max_rel_diff(&cpu.embed_images(&images), &dev.embed_images(&images));
    let mut dl = 0.0f32;
    let mut same_len = true;
    for _ in 0..3 {
        let a = cpu.step(std::slice::from_ref(&batch), 1e-3);
        let b = dev.step(std::slice::from_ref(&batch), 1e-3);
        same_len &= a.losses.len() == b.losses.len() && a.applied && b.applied;
        dl = a.losses.iter().zip(&b.losses).map(|(x, y)| (x.1 - y.1).abs()).fold(dl, f32::max);
    }
    println!(
        "{{\"check\": \"compare\", \"device\": \"{TARGET}\", \"text_rel_diff\": {dt:.2e}, \"image_rel_diff\": {di:.2e}, \"loss_abs_diff\": {dl:.2e}}}"
    );
    let tolerance = 1e-3;
    if dt > tolerance || di > tolerance || dl > tolerance || !same_len {
        return Err(format!("CPU and device disagree beyond {tolerance}"));
    }
    Ok(())
}

fn train(size: &str, steps: usize, batch_size: usize) -> Result<(), String> {
    let mut config = ModelConfig::preset(Arch::Unimo, size, VOCAB, FEAT, SPECIAL).map_err(|e| e.to_string())?;
    config.weights = ObjectiveWeights {
        mlm: 1.0,
        seq2seq: 0.0,
        mrm: 1.0,
        cmcl: 1.0,
        itm: 0.0,
        caption: 0.0,
    };
    let mut trainer = Trainer::<Target>::new(config, settings(), target_device()).map_err(|e| e.to_string())?;
    // A fixed pool of 8 batches revisited in turn: the loss must fall as they are learned.
    let pool: Vec<Vec<Example>> = (0..8).map(|s| pairs(batch_size, VOCAB, FEAT, s)).collect();
    let mut totals = Vec::with_capacity(steps);
    let warmup = 5.min(steps / 2);
    let mut timed = None;
    let mut reads_at_warmup = 0;
    for step in 0..steps {
        if step == warmup {
            timed = Some(Instant::now());
            reads_at_warmup = readback::reads();
        }
        let report = trainer.step(std::slice::from_ref(&pool[step % pool.len()]), 1e-4);
        if report.nonfinite {
            return Err(format!("non-finite step {step}"));
        }
        totals.push(report.losses.first().map_or(f32::NAN, |l| l.1));
    }
    let secs = timed.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let reads = readback::reads() - reads_at_warmup;
    let k = (steps / 10).max(1);
    let first = totals[..k].iter().sum::<f32>() / k as f32;
    let last = totals[steps - k..].iter().sum::<f32>() / k as f32;
    let timed_steps = (steps - warmup) as f64;
    println!(
        "{{\"check\": \"train\", \"backend\": \"{}\", \"size\": \"{size}\", \"params\": {}, \"steps\": {steps}, \"batch\": {batch_size}, \"loss_first\": {first:.4}, \"loss_last\": {last:.4}, \"ms_per_step\": {:.2}, \"samples_per_s\": {:.1}, \"reads_per_step\": {:.2}, \"shape_signatures\": {}}}",
        TARGET.backend(),
        trainer.num_params(),
        1000.0 * secs / timed_steps,
        batch_size as f64 * timed_steps / secs.max(1e-9),
        reads as f64 / timed_steps,
        trainer.shape_signatures(),
    );
    if last >= first {
        return Err(format!("loss did not fall: {first} -> {last}"));
    }
    Ok(())
}

fn main() {
    let size = arg("--size", "base");
    let steps: usize = arg("--steps", "300").parse().unwrap_or(300);
    let batch: usize = arg("--batch", "32").parse().unwrap_or(32);
    let mode = arg("--mode", "both");
    let result = probe(TARGET).and_then(|adapter| {
        println!("{{\"check\": \"adapter\", \"device\": \"{TARGET}\", \"name\": {:?}}}", adapter.name);
        if mode != "train" {
            compare()?;
        }
        if mode != "compare" {
            train(&size, steps.max(2), batch)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("device_check failed: {e}");
        std::process::exit(1);
    }
}
