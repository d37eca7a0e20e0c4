//! Masked region modelling: L2 regression of the original features and, when a detector
//! gave class distributions, KL divergence to them.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Mean over regions of the mean squared error over feature dimensions.
///
/// # Shapes
/// - `predicted`, `target`: `[r, feature_dim]` -> `[1]`
pub fn regression<B: Backend>(predicted: Tensor<B, 2>, target: Tensor<B, 2>) -> Tensor<B, 1> {
    (predicted - target).square().mean()
}

/// [`regression`] over the rows where `weights` is 1, divided by `count` (their number).
///
/// # Shapes
/// - `predicted`, `target`: `[r, feature_dim]`, `weights`: `[r]` -> `[1]`
pub fn masked_regression<B: Backend>(predicted: Tensor<B, 2>, target: Tensor<B, 2>, weights: Tensor<B, 1>, count: usize) -> Tensor<B, 1> {
    let [r, f] = predicted.dims();
    let per_row = (predicted - target).square().sum_dim(1).reshape([r]);
    (per_row * weights).sum().div_scalar((count.max(1) * f) as f64)
}

/// [`kl_to_classes`] divided by `count` instead of the row count: rows whose target is all
/// zeros (no class distribution, or padding) add nothing.
///
/// # Shapes
/// - `logits`, `target`: `[r, classes]` -> `[1]`
pub fn kl_to_classes_over<B: Backend>(
    logits: Tensor<B, 2>,
    target: Tensor<B, 2>,
    target_entropy_sum: f32,
    count: usize,
) -> Tensor<B, 1> {
    let cross = (target * log_softmax(logits, 1)).sum();
    cross.neg().add_scalar(target_entropy_sum).div_scalar(count.max(1) as f64)
}

/// Mean over regions of `KL(target || softmax(logits))`; `target_entropy_sum` is the
/// constant `sum p ln p` over all regions (computed on the CPU, 0 ln 0 = 0).
///
/// # Shapes
/// - `logits`, `target`: `[r, classes]` -> `[1]`
pub fn kl_to_classes<B: Backend>(logits: Tensor<B, 2>, target: Tensor<B, 2>, target_entropy_sum: f32) -> Tensor<B, 1> {
    let r = logits.dims()[0] as f32;
    let cross = (target * log_softmax(logits, 1)).sum();
    cross.neg().add_scalar(target_entropy_sum).div_scalar(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn kl_is_zero_for_matching_distribution_and_positive_otherwise() {
        let device = Default::default();
        let p = [0.2f32, 0.8];
        let plnp: f32 = p.iter().map(|x| x * x.ln()).sum();
        let target = Tensor::<NdArray, 2>::from_floats([p], &device);
        let exact = Tensor::<NdArray, 2>::from_floats([[0.2f32.ln(), 0.8f32.ln()]], &device);
        let kl: f32 = kl_to_classes(exact, target.clone(), plnp).into_scalar();
        assert!(kl.abs() < 1e-6);
        let off = Tensor::<NdArray, 2>::from_floats([[0.0, 0.0]], &device);
        let kl: f32 = kl_to_classes(off, target, plnp).into_scalar();
        assert!(kl > 0.1);
    }
}
