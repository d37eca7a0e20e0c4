//! Generation objectives beyond UNIMO's fragment seq2seq (the loss itself is the token
//! cross-entropy of [`super::token`]):
//!
//! - image-to-text seq2seq ("caption") on pairs: the joint row `[IMG] v1..vk [CLS] w1..wn [SEP]`
//!   under the image-to-text mask (image rows see only image rows; text token `i` sees the
//!   image and text tokens `0..=i`), where `[CLS] w1..wn` predict `w1..wn [SEP]`;
//! - text continuation: a text `[CLS] w1..wn [SEP]` becomes `[CLS] w1..wk [SEP] wk+1..wn`
//!   under the prefix-LM mask, the suffix being the target (prefix -> continuation), which is
//!   what `unimod generate` asks of the model.

use rand::Rng;

use crate::attention_mask::MaskKind;
use crate::config::SpecialTokens;
use crate::masking::Seq2SeqText;
use crate::plan::{ImageRows, Plan, Slot, TokenTarget, JOINT};

/// `(position, next id)` of a caption `[CLS] w1..wn [SEP]`: every token but the last
/// predicts its successor. Empty for fewer than two tokens.
pub fn next_token_targets(ids: &[u32]) -> Vec<(usize, u32)> {
    ids.windows(2).enumerate().map(|(i, w)| (i, w[1])).collect()
}

/// Adds one image-to-text joint row per pair (unmasked image, whole caption) and its
/// next-token targets to `plan.caption`.
pub(crate) fn plan_captions<'a>(plan: &mut Plan, pairs: impl IntoIterator<Item = (&'a ImageRows, &'a [u32])>) {
    for (image, ids) in pairs {
        let targets = next_token_targets(ids);
        if targets.is_empty() {
            continue;
        }
        let group = &mut plan.groups[JOINT];
        let row = group.kinds.len();
        group.images.push(image.clone());
        group.texts.push(ids.to_vec());
        group.kinds.push(MaskKind::ImageToText);
        plan.caption.extend(targets.into_iter().map(|(pos, label)| TokenTarget {
            slot: Slot { group: JOINT, row, pos },
            label,
        }));
    }
}

/// Splits `[CLS] w1..wm [SEP]` at a uniformly drawn point into the source `[CLS] w1..wk [SEP]`
/// and the target `wk+1..wm` (`1 <= k < m`), laid out like [`crate::masking::seq2seq_split`]:
/// the source's `[SEP]` predicts `wk+1`, the last target token predicts `[SEP]`. `None` when
/// the text has fewer than two inner tokens or is not framed by `[CLS]`/`[SEP]`.
pub(crate) fn continuation_split<R: Rng>(tokens: &[u32], special: &SpecialTokens, rng: &mut R) -> Option<Seq2SeqText> {
    let n = tokens.len();
    if n < 4 || tokens[0] != special.cls || tokens[n - 1] != special.sep {
        return None;
    }
    let inner = &tokens[1..n - 1];
    let m = inner.len();
    let k = rng.random_range(1..m);
    let mut input = Vec::with_capacity(n);
    input.push(special.cls);
    input.extend_from_slice(&inner[..k]);
    input.push(special.sep);
    let source_len = input.len();
    input.extend_from_slice(&inner[k..]);
    let mut targets: Vec<(usize, u32)> = inner[k..]
        .iter()
        .enumerate()
        .map(|(j, &t)| (source_len - 1 + j, t))
        .collect();
    targets.push((n - 1, special.sep));
    Some(Seq2SeqText { input, source_len, targets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn special() -> SpecialTokens {
        SpecialTokens { pad: 1, cls: 0, sep: 2, mask: 3, img: 4 }
    }

    #[test]
    fn caption_targets_shift_by_one() {
        assert_eq!(next_token_targets(&[0, 10, 11, 2]), vec![(0, 10), (1, 11), (2, 2)]);
        assert!(next_token_targets(&[0]).is_empty());
    }

    #[test]
    fn continuation_keeps_order_and_predicts_the_suffix() {
        let text = [0, 10, 11, 12, 13, 14, 2];
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let s = continuation_split(&text, &special(), &mut rng).expect("split");
            assert_eq!(s.input.len(), text.len());
            let k = s.source_len - 2;
            assert!((1..5).contains(&k), "source keeps 1..m-1 words: {k}");
            assert_eq!(&s.input[..s.source_len - 1], &text[..k + 1], "prefix in order");
            assert_eq!(s.input[s.source_len - 1], 2, "source ends with [SEP]");
            assert_eq!(&s.input[s.source_len..], &text[k + 1..6], "suffix in order");
            // Each target position predicts the next word of the original text, then [SEP].
            let predicted: Vec<u32> = s.targets.iter().map(|t| t.1).collect();
            assert_eq!(predicted, text[k + 1..].to_vec());
            assert_eq!(s.targets[0].0, s.source_len - 1);
            assert_eq!(s.targets.last().map(|t| t.0), Some(text.len() - 1));
        }
        assert!(continuation_split(&[0, 10, 2], &special(), &mut rng).is_none());
        assert!(continuation_split(&[5, 10, 11, 2], &special(), &mut rng).is_none());
    }
}
