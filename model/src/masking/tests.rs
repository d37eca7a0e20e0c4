//! Masking: span masks, seq2seq splits, and region masks with their overlap and coverage rules.

use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::tests::common::SPECIAL;

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
        let m = anchor_mask(&locs, MRM_RATIO, ANCHOR_COVERAGE, &mut rng);
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
        let m = anchor_mask(&locs, MRM_RATIO, ANCHOR_COVERAGE, &mut rng);
        for i in 1..locs.len() {
            for j in 1..locs.len() {
                if m[i] && iou(&locs[i], &locs[j]) > 0.35 {
                    // Only anchors pull in neighbours, but with these disjoint clusters
                    // every masked region's overlapping partner is masked too.
                    assert!(m[j], "{i} masked without its overlapping region {j}");
                }
            }
        }
    }
}
/// The built-in object sequence of `ingest::image::objects` with its default scales
/// (1x1, 2x2, 3x3, 4x4, 6x6): the global row, then each scale's cells row by row.
fn default_pyramid() -> Vec<[f32; 5]> {
    let mut locs = vec![[0.0, 0.0, 1.0, 1.0, 1.0]];
    for n in [1usize, 2, 3, 4, 6] {
        let inv = 1.0 / n as f32;
        for gy in 0..n {
            for gx in 0..n {
                locs.push([
                    gx as f32 * inv,
                    gy as f32 * inv,
                    (gx + 1) as f32 * inv,
                    (gy + 1) as f32 * inv,
                    inv * inv,
                ]);
            }
        }
    }
    locs
}

/// Share of the image that no visible region covers, on a 72x72 raster (exact for the
/// pyramid: 72 is a multiple of every scale), independent of the mask's own bookkeeping.
fn raster_hidden_share(locs: &[[f32; 5]], masked: &[bool]) -> f32 {
    const G: usize = 72;
    let mut seen = vec![false; G * G];
    for (_, loc) in locs.iter().enumerate().skip(1).filter(|(r, _)| !masked[*r]) {
        let to = |v: f32| (v * G as f32).round() as usize;
        for y in to(loc[1])..to(loc[3]) {
            for x in to(loc[0])..to(loc[2]) {
                seen[y * G + x] = true;
            }
        }
    }
    seen.iter().filter(|&&s| !s).count() as f32 / (G * G) as f32
}

#[test]
fn anchor_mask_hides_what_it_masks_on_the_default_pyramid() {
    let locs = default_pyramid();
    assert_eq!(locs.len(), 67);
    let mut rng = StdRng::seed_from_u64(6);
    let mut shares = Vec::new();
    for _ in 0..300 {
        let m = anchor_mask(&locs, MRM_RATIO, ANCHOR_COVERAGE, &mut rng);
        assert!(!m[0], "the [IMG] row is never masked");
        assert!(m.iter().any(|&x| x), "every image has a target");
        for i in (1..locs.len()).filter(|&i| m[i]) {
            for j in (1..locs.len()).filter(|&j| !m[j]) {
                let inside = coverage(&locs[i], &locs[j]);
                assert!(
                    inside <= 0.25 + 1e-3,
                    "masked region {i} {:?} lies {inside} inside visible region {j} {:?}",
                    locs[i],
                    locs[j]
                );
            }
        }
        let share = raster_hidden_share(&locs, &m);
        assert!((0.08..=0.3).contains(&share), "hidden share {share}");
        shares.push(share);
    }
    let mean = shares.iter().sum::<f32>() / shares.len() as f32;
    assert!((0.13..=0.18).contains(&mean), "mean hidden share {mean}");
}

#[test]
fn coverage_of_known_boxes() {
    let big = [0.0, 0.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 9.0];
    let small = [0.0, 0.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 36.0];
    assert!((coverage(&small, &big) - 1.0).abs() < 1e-6);
    assert!((coverage(&big, &small) - 0.25).abs() < 1e-6);
    assert!((iou(&small, &big) - 0.25).abs() < 1e-6, "what the IoU rule missed");
    assert_eq!(coverage(&[0.5, 0.5, 0.5, 0.5, 0.0], &big), 0.0);
}

#[test]
fn anchor_mask_of_a_single_region_or_degenerate_boxes() {
    let mut rng = StdRng::seed_from_u64(7);
    let one = vec![[0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0, 1.0]];
    assert_eq!(anchor_mask(&one, MRM_RATIO, ANCHOR_COVERAGE, &mut rng), vec![false, true]);
    // Boxes without area: counting decides (round(0.15 * 20) = 3).
    let mut flat = vec![[0.0, 0.0, 1.0, 1.0, 1.0]];
    flat.extend((0..20).map(|i| [i as f32 * 0.05, 0.5, i as f32 * 0.05, 0.5, 0.0]));
    let m = anchor_mask(&flat, MRM_RATIO, ANCHOR_COVERAGE, &mut rng);
    assert_eq!(m.iter().filter(|&&x| x).count(), 3);
}
