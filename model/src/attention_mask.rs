//! Attention masks of MODEL.md as additive biases: bidirectional over non-pad entries,
//! prefix LM for generation, and image-to-text (image rows blind to text).
//!
//! Sequences are laid out `[visual rows (padded to N)] [text tokens (padded to T)]`; either
//! part may be empty. A bias is 0 where a query may attend and [`BLOCKED`] where it may not.

/// Additive bias of a blocked query/key pair: large enough that `exp` underflows to exactly 0.
pub(crate) const BLOCKED: f32 = -1.0e9;

/// Which entries of a sequence each query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaskKind {
    /// Every query sees every valid (non-pad) entry.
    Bidirectional,
    /// Prefix LM: the source (all visual rows and the first `source_len` text tokens) sees
    /// the source; a target token sees the source and the target tokens up to itself.
    PrefixLm {
        /// Text tokens in the source block.
        source_len: usize,
    },
    /// Image-to-text generation: visual rows see only visual rows; text token `i` sees the
    /// visual rows and text tokens `0..=i`.
    ImageToText,
}

/// One row of a batch as the mask builder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MaskRow {
    /// Valid visual rows (the rest of the `N` slots are padding).
    pub(crate) visual: usize,
    /// Valid text tokens (the rest of the `T` slots are padding).
    pub(crate) text: usize,
    /// Visibility rule.
    pub(crate) kind: MaskKind,
}

/// Key-padding bias, `[rows x (n + t)]`: the bidirectional mask, shared by every query.
pub(crate) fn padding_bias(rows: &[MaskRow], n: usize, t: usize) -> Vec<f32> {
    let l = n + t;
    let mut bias = vec![BLOCKED; rows.len() * l];
    for (b, row) in rows.iter().enumerate() {
        let base = b * l;
        bias[base..base + row.visual.min(n)].fill(0.0);
        bias[base + n..base + n + row.text.min(t)].fill(0.0);
    }
    bias
}

/// Full bias, `[rows x (n + t) x (n + t)]`, for masks where queries differ.
pub(crate) fn full_bias(rows: &[MaskRow], n: usize, t: usize) -> Vec<f32> {
    let l = n + t;
    let mut bias = vec![BLOCKED; rows.len() * l * l];
    for (b, row) in rows.iter().enumerate() {
        let (nv, nt) = (row.visual.min(n), row.text.min(t));
        let valid_key = |k: usize| (k < nv) || (k >= n && k - n < nt);
        for q in 0..l {
            let base = (b * l + q) * l;
            let q_text = q >= n;
            for k in 0..l {
                if !valid_key(k) {
                    continue;
                }
                let k_text = k >= n;
                let visible = match row.kind {
                    MaskKind::Bidirectional => true,
                    MaskKind::PrefixLm { source_len } => {
                        let k_target = k_text && k - n >= source_len;
                        let q_target = q_text && q - n >= source_len;
                        !k_target || (q_target && k <= q)
                    }
                    MaskKind::ImageToText => !k_text || (q_text && k <= q),
                };
                if visible {
                    bias[base + k] = 0.0;
                }
            }
        }
    }
    bias
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(bias: &[f32], l: usize, b: usize, q: usize, k: usize) -> bool {
        bias[(b * l + q) * l + k] == 0.0
    }

    #[test]
    fn padding_blocks_only_pad_keys() {
        let rows = [MaskRow {
            visual: 2,
            text: 3,
            kind: MaskKind::Bidirectional,
        }];
        let bias = padding_bias(&rows, 4, 5);
        let expect = [0., 0., BLOCKED, BLOCKED, 0., 0., 0., BLOCKED, BLOCKED];
        assert_eq!(bias, expect);
        let full = full_bias(&rows, 4, 5);
        for q in 0..9 {
            for (k, e) in expect.iter().enumerate() {
                assert_eq!(visible(&full, 9, 0, q, k), *e == 0.0);
            }
        }
    }

    #[test]
    fn prefix_lm_hides_future_target_tokens() {
        let rows = [MaskRow {
            visual: 0,
            text: 6,
            kind: MaskKind::PrefixLm { source_len: 3 },
        }];
        let b = full_bias(&rows, 0, 6);
        assert!(visible(&b, 6, 0, 0, 2), "source sees source");
        assert!(!visible(&b, 6, 0, 2, 3), "source does not see target");
        assert!(visible(&b, 6, 0, 4, 1) && visible(&b, 6, 0, 4, 3) && visible(&b, 6, 0, 4, 4));
        assert!(!visible(&b, 6, 0, 4, 5), "target does not see later target");
    }

    #[test]
    fn image_to_text_keeps_image_blind_to_text() {
        let rows = [MaskRow {
            visual: 2,
            text: 3,
            kind: MaskKind::ImageToText,
        }];
        let b = full_bias(&rows, 2, 3);
        assert!(visible(&b, 5, 0, 0, 1));
        assert!(!visible(&b, 5, 0, 1, 2), "image row does not see text");
        assert!(visible(&b, 5, 0, 3, 0) && visible(&b, 5, 0, 3, 3));
        assert!(!visible(&b, 5, 0, 3, 4));
    }
}
