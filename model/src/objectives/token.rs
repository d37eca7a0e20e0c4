//! Token prediction (MLM and seq2seq): cross-entropy over the vocabulary, computed only at
//! the positions that have a target.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Mean cross-entropy of `labels` under `logits`.
///
/// # Shapes
/// - `logits`: `[m, vocab]`, `labels`: `[m]` -> `[1]`
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let m = labels.dims()[0];
    log_softmax(logits, 1)
        .gather(1, labels.reshape([m, 1]))
        .mean()
        .neg()
}

/// Cross-entropy of `labels` under `logits`, summed over the rows where `weights` is 1 and
/// divided by `count` (the number of such rows; padding rows have weight 0).
///
/// # Shapes
/// - `logits`: `[m, vocab]`, `labels`, `weights`: `[m]` -> `[1]`
pub fn masked_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
    weights: Tensor<B, 1>,
    count: usize,
) -> Tensor<B, 1> {
    let m = labels.dims()[0];
    let picked = log_softmax(logits, 1).gather(1, labels.reshape([m, 1])).reshape([m]);
    (picked * weights).sum().neg().div_scalar(count.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    #[test]
    fn matches_hand_computed_value() {
        let device = Default::default();
        let logits = Tensor::<NdArray, 2>::from_floats([[0.0, 0.0], [2.0, 0.0]], &device);
        let labels = Tensor::<NdArray, 1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &device);
        let loss: f32 = cross_entropy(logits, labels).into_scalar();
        let expect = (2f32.ln() + (1.0 + 2f32.exp()).ln() - 0.0 + 0.0) / 2.0;
        assert!((loss - expect).abs() < 1e-5, "{loss} vs {expect}");
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // burn's slices: one range per dimension
    fn padding_rows_change_nothing() {
        let device = Default::default();
        let logits = Tensor::<NdArray, 2>::from_floats([[0.0, 0.0], [2.0, 0.0], [9.0, -9.0]], &device);
        let labels = Tensor::<NdArray, 1, Int>::from_data(TensorData::new(vec![0i64, 1, 1], [3]), &device);
        let weights = Tensor::<NdArray, 1>::from_floats([1.0, 1.0, 0.0], &device);
        let masked: f32 = masked_cross_entropy(logits.clone(), labels.clone(), weights, 2).into_scalar();
        let plain: f32 = cross_entropy(logits.slice([0..2]), labels.slice([0..2])).into_scalar();
        assert!((masked - plain).abs() < 1e-6, "{masked} vs {plain}");
    }
}
