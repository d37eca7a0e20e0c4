//! AdamW with decoupled weight decay applied to matrices only (not to LayerNorm weights,
//! biases or the temperature, which are all vectors), plus the global gradient norm and
//! clipping that burn's per-parameter clipping does not provide.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::{GradientsParams, SimpleOptimizer};
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;

/// AdamW whose weight decay skips parameters of rank 1 (biases, LayerNorm, scalars).
#[derive(Clone, Debug)]
pub struct MatrixDecayAdamW {
    /// First-moment decay.
    pub beta_1: f32,
    /// Second-moment decay.
    pub beta_2: f32,
    /// Denominator epsilon.
    pub epsilon: f32,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f32,
}

/// Per-parameter state: both moments and the number of updates.
#[derive(Record, Clone)]
pub struct AdamWMoments<B: Backend, const D: usize> {
    /// First moment.
    pub moment_1: Tensor<B, D>,
    /// Second moment.
    pub moment_2: Tensor<B, D>,
    /// Updates applied so far (for bias correction).
    pub time: usize,
}

impl<B: Backend> SimpleOptimizer<B> for MatrixDecayAdamW {
    type State<const D: usize> = AdamWMoments<B, D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let (b1, b2) = (self.beta_1 as f64, self.beta_2 as f64);
        let state = match state {
            Some(s) => AdamWMoments {
                moment_1: s.moment_1.mul_scalar(b1).add(grad.clone().mul_scalar(1.0 - b1)),
                moment_2: s.moment_2.mul_scalar(b2).add(grad.clone().mul(grad).mul_scalar(1.0 - b2)),
                time: s.time + 1,
            },
            None => AdamWMoments {
                moment_1: grad.clone().mul_scalar(1.0 - b1),
                moment_2: grad.clone().mul(grad).mul_scalar(1.0 - b2),
                time: 1,
            },
        };
        let t = state.time as i32;
        let m_hat = state.moment_1.clone().div_scalar(1.0 - b1.powi(t));
        let v_hat = state.moment_2.clone().div_scalar(1.0 - b2.powi(t));
        let delta = m_hat.div(v_hat.sqrt().add_scalar(self.epsilon as f64));
        let decayed = if D >= 2 && self.weight_decay > 0.0 {
            tensor.mul_scalar(1.0 - lr * self.weight_decay as f64)
        } else {
            tensor
        };
        (decayed - delta.mul_scalar(lr), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        AdamWMoments {
            moment_1: state.moment_1.to_device(device),
            moment_2: state.moment_2.to_device(device),
            time: state.time,
        }
    }
}

/// Sums the squares of every gradient of a module (one device value, read once).
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            // `x * x` rather than `square()`, which ndarray computes with `powf`.
            let s = g.clone().mul(g).sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// Multiplies every gradient of a module by a factor.
struct ScaleGrads<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The global L2 norm of all gradients of `module` (NaN or infinite when any gradient is).
/// Reads one value from the device.
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &GradientsParams) -> f32 {
    match grad_norm_squared::<B, M>(module, grads) {
        Some(s) => crate::readback::to_host(s).first().copied().unwrap_or(f32::NAN).sqrt(),
        None => 0.0,
    }
}

/// The sum of squares of all gradients of `module`, on the device (`None` without
/// gradients).
///
/// # Shapes
/// - output: `[1]`
pub fn grad_norm_squared<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> Option<Tensor<B::InnerBackend, 1>> {
    let mut visitor = SquaredNorm::<B> { grads, sum: None };
    module.visit(&mut visitor);
    visitor.sum
}

/// Multiplies every gradient of a module by a device scalar.
struct ScaleGradsBy<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: Tensor<B::InnerBackend, 1>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGradsBy<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let factor: Tensor<B::InnerBackend, D> = self.factor.clone().reshape([1; D]);
            self.grads.register::<B::InnerBackend, D>(param.id, g.mul(factor));
        }
    }
}

/// Scales all gradients of `module` by `factor` (`[1]`, on the device) without reading it.
pub fn scale_grads_by<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: Tensor<B::InnerBackend, 1>,
) {
    let mut visitor = ScaleGradsBy::<B> { grads, factor };
    module.visit(&mut visitor);
}

/// Scales all gradients of `module` by `factor` in place.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &mut GradientsParams, factor: f64) {
    let mut visitor = ScaleGrads { grads, factor };
    module.visit(&mut visitor);
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn weight_decay_applies_to_matrices_only() {
        let opt = MatrixDecayAdamW {
            beta_1: 0.9,
            beta_2: 0.98,
            epsilon: 1e-6,
            weight_decay: 0.1,
        };
        let device = Default::default();
        // A zero gradient gives a zero Adam update, so only the decay can move a weight.
        let m = Tensor::<NdArray, 2>::ones([2, 2], &device);
        let (m2, _) = SimpleOptimizer::<NdArray>::step(&opt, 0.5, m.clone(), m.zeros_like(), None);
        let v = Tensor::<NdArray, 1>::ones([3], &device);
        let (v2, _) = SimpleOptimizer::<NdArray>::step(&opt, 0.5, v.clone(), v.zeros_like(), None);
        let m2: Vec<f32> = m2.into_data().to_vec().expect("f32");
        let v2: Vec<f32> = v2.into_data().to_vec().expect("f32");
        assert!(m2.iter().all(|&x| (x - 0.95).abs() < 1e-6), "{m2:?}");
        assert!(v2.iter().all(|&x| x == 1.0), "{v2:?}");
    }

    #[test]
    fn first_step_moves_by_learning_rate_against_the_gradient_sign() {
        let opt = MatrixDecayAdamW {
            beta_1: 0.9,
            beta_2: 0.98,
            epsilon: 1e-8,
            weight_decay: 0.0,
        };
        let device = Default::default();
        let p = Tensor::<NdArray, 1>::zeros([2], &device);
        let g = Tensor::<NdArray, 1>::from_floats([3.0, -0.5], &device);
        let (p2, state) = SimpleOptimizer::<NdArray>::step(&opt, 0.01, p, g, None);
        let p2: Vec<f32> = p2.into_data().to_vec().expect("f32");
        assert!((p2[0] + 0.01).abs() < 1e-6 && (p2[1] - 0.01).abs() < 1e-6, "{p2:?}");
        assert_eq!(state.map(|s| s.time), Some(1));
    }
}
