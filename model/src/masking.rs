//! Input corruption for the pretraining objectives, as pure functions over CPU data:
//! span masking for MLM, fragment selection for seq2seq, anchor masking of regions for MRM.
//!
//! Every function takes the random generator explicitly so that a seed fixes the result.

use rand::Rng;

use crate::config::SpecialTokens;

/// Fraction of maskable tokens masked for MLM (BERT, SpanBERT).
pub const MLM_RATIO: f32 = 0.15;
/// Geometric parameter of span lengths (SpanBERT: p = 0.2, mean about 3.8 after clipping).
pub const SPAN_P: f64 = 0.2;
/// Longest masked span (SpanBERT: 10).
pub const MAX_SPAN: usize = 10;
/// Fraction of a text used as the seq2seq target (UNIMO: about 25%).
pub const SEQ2SEQ_RATIO: f32 = 0.25;
/// Fraction of regions masked for MRM.
pub const MRM_RATIO: f32 = 0.15;
/// Regions overlapping an anchor above this IoU are masked with it (MODEL.md: 0.3-0.4).
pub const ANCHOR_IOU: f32 = 0.35;

/// A text corrupted for MLM.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedText {
    /// Input ids after masking (same length as the original).
    pub input: Vec<u32>,
    /// `(position, original id)` of every masked position, ascending.
    pub targets: Vec<(usize, u32)>,
}

/// Draws a span length from a geometric distribution clipped to [1, `MAX_SPAN`].
fn span_length<R: Rng>(rng: &mut R) -> usize {
    let mut len = 1;
    while len < MAX_SPAN && rng.random::<f64>() >= SPAN_P {
        len += 1;
    }
    len
}

/// A random non-special token id (for the 10% random replacement).
fn random_token<R: Rng>(rng: &mut R, vocab: usize, special: &SpecialTokens) -> Option<u32> {
    (0..32)
        .map(|_| rng.random_range(0..vocab as u32))
        .find(|&id| !special.contains(id))
}

/// SpanBERT-style span masking: about `ratio` of the non-special tokens, in contiguous spans
/// of geometric length that never cross a special token; each span is replaced by `[MASK]`
/// (80%), random tokens (10%) or kept (10%). At least one token is masked when any is
/// maskable.
pub fn span_mask<R: Rng>(
    tokens: &[u32],
    special: &SpecialTokens,
    vocab: usize,
    ratio: f32,
    rng: &mut R,
) -> MaskedText {
    let candidates: Vec<usize> = (0..tokens.len())
        .filter(|&i| !special.contains(tokens[i]))
        .collect();
    let mut input = tokens.to_vec();
    if candidates.is_empty() {
        return MaskedText {
            input,
            targets: Vec::new(),
        };
    }
    let budget = ((ratio * candidates.len() as f32).round() as usize).clamp(1, candidates.len());
    let mut masked = vec![false; tokens.len()];
    let mut count = 0;
    let mut attempts = 0;
    while count < budget && attempts < 100 * budget {
        attempts += 1;
        let len = span_length(rng).min(budget - count);
        let start = candidates[rng.random_range(0..candidates.len())];
        if masked[start] {
            continue;
        }
        let mut span = Vec::with_capacity(len);
        let mut pos = start;
        while span.len() < len
            && pos < tokens.len()
            && !special.contains(tokens[pos])
            && !masked[pos]
        {
            span.push(pos);
            pos += 1;
        }
        let choice: f32 = rng.random();
        for &p in &span {
            masked[p] = true;
            if choice < 0.8 {
                input[p] = special.mask;
            } else if choice < 0.9 {
                if let Some(id) = random_token(rng, vocab, special) {
                    input[p] = id;
                }
            }
        }
        count += span.len();
    }
    let targets = (0..tokens.len())
        .filter(|&i| masked[i])
        .map(|i| (i, tokens[i]))
        .collect();
    MaskedText { input, targets }
}

/// A text rearranged for seq2seq generation with a prefix-LM mask:
/// `[CLS] source [SEP] target`, where the target is the selected fragments in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Seq2SeqText {
    /// The rearranged ids (same length as the original text).
    pub input: Vec<u32>,
    /// Length of the source block `[CLS] source [SEP]`; positions from here on are target.
    pub source_len: usize,
    /// `(position, next id)`: the output at `position` predicts `next id` (the `[SEP]` of the
    /// source predicts the first target token; the last target token predicts `[SEP]`).
    pub targets: Vec<(usize, u32)>,
}

/// Chooses fragments covering about `ratio` of the inner tokens of `[CLS] w.. [SEP]` as the
/// generation target. `None` when the text is too short or not framed by `[CLS]`/`[SEP]`.
pub fn seq2seq_split<R: Rng>(
    tokens: &[u32],
    special: &SpecialTokens,
    ratio: f32,
    rng: &mut R,
) -> Option<Seq2SeqText> {
    let n = tokens.len();
    if n < 4 || tokens[0] != special.cls || tokens[n - 1] != special.sep {
        return None;
    }
    let inner = &tokens[1..n - 1];
    let m = inner.len();
    let k = ((ratio * m as f32).round() as usize).clamp(1, m - 1);
    let mut chosen = vec![false; m];
    let mut count = 0;
    let mut attempts = 0;
    while count < k && attempts < 100 * k {
        attempts += 1;
        let len = span_length(rng).min(k - count);
        let start = rng.random_range(0..m);
        let mut pos = start;
        while pos < m && pos < start + len && !chosen[pos] {
            chosen[pos] = true;
            count += 1;
            pos += 1;
        }
    }
    let source: Vec<u32> = (0..m).filter(|&i| !chosen[i]).map(|i| inner[i]).collect();
    let target: Vec<u32> = (0..m).filter(|&i| chosen[i]).map(|i| inner[i]).collect();
    let mut input = Vec::with_capacity(n);
    input.push(special.cls);
    input.extend_from_slice(&source);
    input.push(special.sep);
    let source_len = input.len();
    input.extend_from_slice(&target);
    let mut targets = Vec::with_capacity(target.len() + 1);
    for (j, &t) in target.iter().enumerate() {
        targets.push((source_len - 1 + j, t));
    }
    targets.push((n - 1, special.sep));
    Some(Seq2SeqText {
        input,
        source_len,
        targets,
    })
}

/// Intersection over union of two boxes given as 5-d locations (the first four entries are
/// `x1, y1, x2, y2`).
pub fn iou(a: &[f32; 5], b: &[f32; 5]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 5]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Anchor masking of regions: random anchors among rows 1.. are masked together with every
/// region overlapping them above `threshold` IoU, until about `ratio` of the regions are
/// masked (at least one when there is a region). Row 0 (the global `[IMG]` entry) is never
/// masked. Returns one flag per row.
pub fn anchor_mask<R: Rng>(
    locations: &[[f32; 5]],
    ratio: f32,
    threshold: f32,
    rng: &mut R,
) -> Vec<bool> {
    let rows = locations.len();
    let mut masked = vec![false; rows];
    if rows < 2 {
        return masked;
    }
    let regions = rows - 1;
    let budget = ((ratio * regions as f32).round() as usize).clamp(1, regions);
    let mut order: Vec<usize> = (1..rows).collect();
    // Fisher-Yates shuffle: anchors are tried in random order.
    for i in (1..order.len()).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    let mut count = 0;
    for anchor in order {
        if count >= budget {
            break;
        }
        if masked[anchor] {
            continue;
        }
        for r in 1..rows {
            if !masked[r] && (r == anchor || iou(&locations[anchor], &locations[r]) > threshold) {
                masked[r] = true;
                count += 1;
            }
        }
    }
    masked
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const SPECIAL: SpecialTokens = SpecialTokens {
        pad: 1,
        cls: 0,
        sep: 2,
        mask: 3,
        img: 4,
    };

    fn text(n: usize) -> Vec<u32> {
        let mut t = vec![SPECIAL.cls];
        t.extend((0..n).map(|i| 10 + (i as u32 % 90)));
        t.push(SPECIAL.sep);
        t
    }

    #[test]
    fn span_mask_hits_ratio_and_spares_special_tokens() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut masked = 0usize;
        let mut total = 0usize;
        let mut mask_tokens = 0usize;
        let mut multi_token_runs = 0usize;
        for _ in 0..200 {
            let t = text(60);
            let m = span_mask(&t, &SPECIAL, 100, MLM_RATIO, &mut rng);
            assert_eq!(m.input.len(), t.len());
            assert_eq!(m.input[0], SPECIAL.cls);
            assert_eq!(m.input[t.len() - 1], SPECIAL.sep);
            for &(p, orig) in &m.targets {
                assert_eq!(t[p], orig);
                assert!(!SPECIAL.contains(orig));
                if m.input[p] == SPECIAL.mask {
                    mask_tokens += 1;
                }
            }
            // Unmasked positions are untouched.
            for (i, (&a, &b)) in t.iter().zip(&m.input).enumerate() {
                if !m.targets.iter().any(|&(p, _)| p == i) {
                    assert_eq!(a, b);
                }
            }
            multi_token_runs += m.targets.windows(2).filter(|w| w[1].0 == w[0].0 + 1).count();
            masked += m.targets.len();
            total += 60;
        }
        let ratio = masked as f32 / total as f32;
        assert!((ratio - 0.15).abs() < 0.01, "mask ratio {ratio}");
        let mask_share = mask_tokens as f32 / masked as f32;
        assert!((0.7..0.9).contains(&mask_share), "[MASK] share {mask_share}");
        // Spans, not isolated tokens: most masked tokens have a masked neighbour.
        assert!(multi_token_runs as f32 > 0.5 * masked as f32);
    }

    #[test]
    fn span_mask_masks_at_least_one_and_nothing_without_candidates() {
        let mut rng = StdRng::seed_from_u64(2);
        let m = span_mask(&text(2), &SPECIAL, 100, MLM_RATIO, &mut rng);
        assert_eq!(m.targets.len(), 1);
        let m = span_mask(&[SPECIAL.cls, SPECIAL.sep], &SPECIAL, 100, MLM_RATIO, &mut rng);
        assert!(m.targets.is_empty());
    }

    #[test]
    fn seq2seq_split_keeps_tokens_and_targets_quarter() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let t = text(40);
            let s = seq2seq_split(&t, &SPECIAL, SEQ2SEQ_RATIO, &mut rng).expect("long enough");
            assert_eq!(s.input.len(), t.len());
            assert_eq!(s.input[0], SPECIAL.cls);
            assert_eq!(s.input[s.source_len - 1], SPECIAL.sep);
            let k = t.len() - s.source_len;
            assert_eq!(k, 10, "25% of 40 inner tokens");
            // Same multiset of tokens.
            let mut a = t.clone();
            let mut b = s.input.clone();
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b);
            // Teacher forcing: each target is the next input token (the last predicts [SEP]).
            for &(p, next) in &s.targets[..s.targets.len() - 1] {
                assert_eq!(s.input[p + 1], next);
            }
            assert_eq!(s.targets.last().map(|t| t.1), Some(SPECIAL.sep));
        }
        assert!(seq2seq_split(&[SPECIAL.cls, 9, SPECIAL.sep], &SPECIAL, 0.25, &mut rng).is_none());
    }

    fn grid(n: usize) -> Vec<[f32; 5]> {
        let mut locs = vec![[0.0, 0.0, 1.0, 1.0, 1.0]];
        let s = 1.0 / n as f32;
        for y in 0..n {
            for x in 0..n {
                let (x1, y1) = (x as f32 * s, y as f32 * s);
                locs.push([x1, y1, x1 + s, y1 + s, s * s]);
            }
        }
        locs
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = [0.0, 0.0, 1.0, 1.0, 1.0];
        let b = [0.0, 0.0, 0.5, 1.0, 0.5];
        assert!((iou(&a, &b) - 0.5).abs() < 1e-6);
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&b, &[0.5, 0.0, 1.0, 1.0, 0.5]), 0.0);
    }

    #[test]
    fn anchor_mask_hits_ratio_on_disjoint_regions() {
        let mut rng = StdRng::seed_from_u64(4);
        let locs = grid(6); // 36 disjoint regions
        for _ in 0..20 {
            let m = anchor_mask(&locs, MRM_RATIO, ANCHOR_IOU, &mut rng);
            assert!(!m[0], "the [IMG] row is never masked");
            assert_eq!(m.iter().filter(|&&x| x).count(), 5, "round(0.15 * 36)");
        }
    }

    #[test]
    fn anchor_mask_takes_overlapping_regions_together() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut locs = grid(4);
        // Near-duplicates of region 1 and of region 7.
        locs.push([0.0, 0.0, 0.25, 0.24, 0.06]);
        locs.push([0.5, 0.25, 0.74, 0.5, 0.06]);
        for _ in 0..50 {
            let m = anchor_mask(&locs, MRM_RATIO, ANCHOR_IOU, &mut rng);
            for i in 1..locs.len() {
                for j in 1..locs.len() {
                    if m[i] && iou(&locs[i], &locs[j]) > ANCHOR_IOU {
                        // Only anchors pull in neighbours, but with these disjoint clusters
                        // every masked region's overlapping partner is masked too.
                        assert!(m[j], "{i} masked without its overlapping region {j}");
                    }
                }
            }
        }
    }
}
