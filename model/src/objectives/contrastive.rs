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
    masked_group_info_nce_with_extra(anchors, candidates, scale, positives, valid_candidates, valid_anchors, None)
}

/// Extra candidates of [`masked_group_info_nce_with_extra`], with their masks on the device
/// (decided there, by retrieval: [`crate::memory::retrieve`]).
pub(crate) struct ExtraCandidates<B: Backend> {
    /// `[e, d]`, L2-normalised (encoded in the step, with a gradient).
    pub(crate) candidates: Tensor<B, 2>,
    /// `[a, e]`: 0 where the extra candidate is a positive of the anchor, [`BLOCKED`] elsewhere.
    pub(crate) positive_bias: Tensor<B, 2>,
    /// `[1, e]`: 0 where the extra candidate is in every anchor's denominator, [`BLOCKED`]
    /// elsewhere (a positive of an anchor is in its denominator either way).
    pub(crate) candidate_bias: Tensor<B, 2>,
}

/// [`masked_group_info_nce`] with extra candidate columns whose positives are known only on
/// the device.
///
/// # Shapes
/// - `anchors`: `[a, d]`, `candidates`: `[c, d]`, `scale`: `[1]` -> `[1]`
pub(crate) fn masked_group_info_nce_with_extra<B: Backend>(
    anchors: Tensor<B, 2>,
    candidates: Tensor<B, 2>,
    scale: Tensor<B, 1>,
    positives: &[Vec<usize>],
    valid_candidates: usize,
    valid_anchors: usize,
    extra: Option<ExtraCandidates<B>>,
) -> Tensor<B, 1> {
    let [a, _] = anchors.dims();
    let c = candidates.dims()[0];
    let device = anchors.device();
    let scale = scale.unsqueeze_dim::<2>(0);
    let extra_logits = extra.as_ref().map(|e| anchors.clone().matmul(e.candidates.clone().transpose()) * scale.clone());
    let logits = anchors.matmul(candidates.transpose()) * scale;
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
    let (all, positive) = (logits.clone() + mask(all), logits + mask(positive));
    let (all, positive) = match (extra, extra_logits) {
        (Some(e), Some(x)) => {
            let e_cols = e.candidates.dims()[0];
            // In an anchor's denominator: retrieved above the threshold, or a positive of it.
            let in_all = e.candidate_bias.expand([a, e_cols]).max_pair(e.positive_bias.clone());
            (Tensor::cat(vec![all, x.clone() + in_all], 1), Tensor::cat(vec![positive, x + e.positive_bias], 1))
        }
        _ => (all, positive),
    };
    let per_anchor = logsumexp(all) - logsumexp(positive);
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

    #[test]
    fn extra_columns_on_the_device_equal_the_same_columns_given_on_the_host() {
        let device = Default::default();
        let t = |v: Vec<[f32; 2]>| {
            let n = v.len();
            Tensor::<NdArray, 2>::from_data(TensorData::new(v.concat(), [n, 2]), &device)
        };
        let n = |x: f32, y: f32| {
            let l = (x * x + y * y).sqrt();
            [x / l, y / l]
        };
        let anchors = t(vec![n(1.0, 0.0), n(0.0, 1.0)]);
        let batch = vec![n(1.0, 0.2), n(0.1, 1.0)];
        let extra = vec![n(0.9, 0.3), n(-1.0, 0.0), n(0.3, 0.9)];
        let scale = Tensor::<NdArray, 1>::from_floats([3.0], &device);
        // Host: anchor 0's positives are batch 0 and extra 0; anchor 1's batch 1; extra 2 is a
        // candidate of both (retrieved by someone, as extra 0 is), extra 1 of none.
        let all_host = t([batch.clone(), vec![extra[0], extra[2]]].concat());
        let host = group_info_nce(anchors.clone(), all_host, scale.clone(), &[vec![0, 2], vec![1]]);
        let b = BLOCKED;
        let positive_bias = Tensor::<NdArray, 2>::from_floats([[0.0, b, b], [b, b, b]], &device);
        let candidate_bias = Tensor::<NdArray, 2>::from_floats([[0.0, b, 0.0]], &device);
        let dev = masked_group_info_nce_with_extra(
            anchors,
            t(batch),
            scale,
            &[vec![0], vec![1]],
            2,
            2,
            Some(ExtraCandidates { candidates: t(extra), positive_bias, candidate_bias }),
        );
        let (h, d): (f32, f32) = (host.into_scalar(), dev.into_scalar());
        assert!((h - d).abs() < 1e-5, "{h} vs {d}");
    }
}
