//! Cross-modal contrastive learning with a group structure: each anchor has several
//! positives and shares all candidates of the other modality as negatives.
//!
//! `loss(anchor) = -log( sum_pos exp(s/t) / sum_all exp(s/t) )`, computed as
//! `logsumexp(all) - logsumexp(pos)`, averaged over anchors and over both directions.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::attention_mask::BLOCKED;

/// `logsumexp` over the last dimension.
///
/// # Shapes
/// - `x`: `[a, c]` -> `[a]`
fn logsumexp<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 1> {
    let a = x.dims()[0];
    let max = x.clone().max_dim(1).detach();
    (x - max.clone()).exp().sum_dim(1).log().add(max).reshape([a])
}

/// One direction of the group InfoNCE loss.
///
/// `positives[i]` lists the candidate columns that are positives of anchor `i`.
///
/// # Shapes
/// - `anchors`: `[a, d]`, `candidates`: `[c, d]` (both L2-normalised), `scale`: `[1]` -> `[1]`
pub fn group_info_nce<B: Backend>(
    anchors: Tensor<B, 2>,
    candidates: Tensor<B, 2>,
    scale: Tensor<B, 1>,
    positives: &[Vec<usize>],
) -> Tensor<B, 1> {
    let (a, c) = (anchors.dims()[0], candidates.dims()[0]);
    masked_group_info_nce(anchors, candidates, scale, positives, c, a)
}

/// [`group_info_nce`] over padded inputs: only the first `valid_candidates` candidates (and
/// each anchor's positives) enter an anchor's denominator, and only the first
/// `valid_anchors` anchors count (the mean is over them). A padding anchor needs one
/// positive (any column): its loss is then exactly 0.
///
/// # Shapes
/// - `anchors`: `[a, d]`, `candidates`: `[c, d]`, `scale`: `[1]` -> `[1]`
pub fn masked_group_info_nce<B: Backend>(
    anchors: Tensor<B, 2>,
    candidates: Tensor<B, 2>,
    scale: Tensor<B, 1>,
    positives: &[Vec<usize>],
    valid_candidates: usize,
    valid_anchors: usize,
) -> Tensor<B, 1> {
    let [a, _] = anchors.dims();
    let c = candidates.dims()[0];
    let device = anchors.device();
    let logits = anchors.matmul(candidates.transpose()) * scale.unsqueeze_dim(0);
    let mut positive = vec![BLOCKED; a * c];
    let mut all = vec![BLOCKED; a * c];
    for i in 0..a {
        all[i * c..i * c + valid_candidates.min(c)].fill(0.0);
    }
    for (i, cols) in positives.iter().enumerate() {
        for &j in cols {
            positive[i * c + j] = 0.0;
            all[i * c + j] = 0.0;
        }
    }
    let mask = |m: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(m, [a, c]), &device);
    let per_anchor = logsumexp(logits.clone() + mask(all)) - logsumexp(logits + mask(positive));
    let mut w = vec![0.0f32; a];
    w[..valid_anchors.min(a)].fill(1.0);
    let w = Tensor::<B, 1>::from_data(TensorData::new(w, [a]), &device);
    (per_anchor * w).sum().div_scalar(valid_anchors.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn matches_hand_computed_group_loss() {
        let device = Default::default();
        let anchors = Tensor::<NdArray, 2>::from_floats([[1.0, 0.0]], &device);
        let candidates = Tensor::<NdArray, 2>::from_floats([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], &device);
        let scale = Tensor::<NdArray, 1>::from_floats([2.0], &device);
        let loss: f32 = group_info_nce(anchors, candidates, scale, &[vec![0, 2]]).into_scalar();
        let e = |s: f32| (2.0 * s).exp();
        let expect = -((e(1.0) + e(0.6)) / (e(1.0) + e(0.0) + e(0.6))).ln();
        assert!((loss - expect).abs() < 1e-5, "{loss} vs {expect}");
    }
}
