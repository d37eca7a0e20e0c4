//! Image-text matching: binary cross-entropy on the matching logits.

use burn::prelude::*;
use burn::tensor::TensorData;

/// Mean binary cross-entropy with logits, `softplus(x) - y x`, written stably as
/// `max(x, 0) - y x + log(1 + exp(-|x|))`.
///
/// # Shapes
/// - `logits`: `[k]`, `labels`: one per logit -> `[1]`
pub fn binary_cross_entropy<B: Backend>(logits: Tensor<B, 1>, labels: &[bool]) -> Tensor<B, 1> {
    let k = labels.len();
    let y: Vec<f32> = labels.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect();
    let y = Tensor::<B, 1>::from_data(TensorData::new(y, [k]), &logits.device());
    let softplus = logits.clone().clamp_min(0.0) + logits.clone().abs().neg().exp().log1p();
    (softplus - logits * y).mean()
}

/// [`binary_cross_entropy`] summed over the logits where `weights` is 1 and divided by
/// `count` (their number; padding has weight 0).
///
/// # Shapes
/// - `logits`, `weights`: `[k]`, `labels`: one per logit -> `[1]`
pub fn masked_binary_cross_entropy<B: Backend>(
    logits: Tensor<B, 1>,
    labels: &[bool],
    weights: Tensor<B, 1>,
    count: usize,
) -> Tensor<B, 1> {
    let k = labels.len();
    let y: Vec<f32> = labels.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect();
    let y = Tensor::<B, 1>::from_data(TensorData::new(y, [k]), &logits.device());
    let softplus = logits.clone().clamp_min(0.0) + logits.clone().abs().neg().exp().log1p();
    ((softplus - logits * y) * weights).sum().div_scalar(count.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn matches_hand_computed_value() {
        let device = Default::default();
        let logits = Tensor::<NdArray, 1>::from_floats([2.0, -1.0], &device);
        let loss: f32 = binary_cross_entropy(logits, &[true, true]).into_scalar();
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let expect = -(sig(2.0).ln() + sig(-1.0).ln()) / 2.0;
        assert!((loss - expect).abs() < 1e-5);
    }
}
