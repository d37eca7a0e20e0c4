//! Input corruption for the pretraining objectives, as pure functions over CPU data:
//! span masking for MLM, fragment selection for seq2seq, anchor masking of regions (by coverage) for MRM.
//!
//! Every function takes the random generator explicitly so that a seed fixes the result.

use rand::Rng;

use crate::config::SpecialTokens;

/// Fraction of maskable tokens masked for MLM (BERT, SpanBERT).
pub(crate) const MLM_RATIO: f32 = 0.15;
/// Geometric parameter of span lengths (SpanBERT: p = 0.2, mean about 3.8 after clipping).
pub(crate) const SPAN_P: f64 = 0.2;
/// Longest masked span (SpanBERT: 10).
pub(crate) const MAX_SPAN: usize = 10;
/// Fraction of a text used as the seq2seq target (UNIMO: about 25%).
pub(crate) const SEQ2SEQ_RATIO: f32 = 0.25;
/// Share of the image area that masked region modelling hides (the area no visible region
/// covers).
pub(crate) const MRM_RATIO: f32 = 0.15;
/// A region covering more than this share of a masked region's own area is masked with it.
/// MODEL.md's IoU rule (0.3-0.4) misses containment across the pyramid's scales (a 6x6 cell
/// inside a 3x3 cell has IoU 0.25), so the coverage rule replaces it: no masked region lies
/// more than a quarter inside a region that stays visible.
pub(crate) const ANCHOR_COVERAGE: f32 = 0.25;

/// A text corrupted for MLM.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MaskedText {
    /// Input ids after masking (same length as the original).
    pub(crate) input: Vec<u32>,
    /// `(position, original id)` of every masked position, ascending.
    pub(crate) targets: Vec<(usize, u32)>,
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
pub(crate) fn span_mask<R: Rng>(
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
pub(crate) struct Seq2SeqText {
    /// The rearranged ids (same length as the original text).
    pub(crate) input: Vec<u32>,
    /// Length of the source block `[CLS] source [SEP]`; positions from here on are target.
    pub(crate) source_len: usize,
    /// `(position, next id)`: the output at `position` predicts `next id` (the `[SEP]` of the
    /// source predicts the first target token; the last target token predicts `[SEP]`).
    pub(crate) targets: Vec<(usize, u32)>,
}

/// Chooses fragments covering about `ratio` of the inner tokens of `[CLS] w.. [SEP]` as the
/// generation target. `None` when the text is too short or not framed by `[CLS]`/`[SEP]`.
pub(crate) fn seq2seq_split<R: Rng>(
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
#[cfg(test)]
pub(crate) fn iou(a: &[f32; 5], b: &[f32; 5]) -> f32 {
    let inter = intersection(a, b);
    let union = box_area(a) + box_area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Area of a box given as a 5-d location (0 for a degenerate box).
fn box_area(r: &[f32; 5]) -> f32 {
    (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0)
}

/// Area of the intersection of two boxes.
fn intersection(a: &[f32; 5], b: &[f32; 5]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h
}

/// The share of box `inner`'s own area that lies inside box `outer` (0 when `inner` has no
/// area). A 6x6 pyramid cell inside a 3x3 cell has coverage 1 (and IoU only 0.25).
pub(crate) fn coverage(inner: &[f32; 5], outer: &[f32; 5]) -> f32 {
    let area = box_area(inner);
    if area <= 0.0 {
        0.0
    } else {
        intersection(inner, outer) / area
    }
}

/// Slack on the coverage threshold, so that boxes meeting it exactly up to rounding (a 6x6
/// cell is exactly a quarter of a 3x3 cell) do not spread the mask.
const COVERAGE_SLACK: f32 = 1e-4;
/// Axis partitions finer than this fall back to a uniform raster of this many bins.
const MAX_AXIS_CELLS: usize = 64;

/// Partition of one axis into intervals: the distinct box edges when there are few, else a
/// uniform raster between the extreme edges.
fn axis_partition(edges: &mut Vec<f32>) -> Vec<f32> {
    edges.sort_by(|a, b| a.total_cmp(b));
    edges.dedup_by(|a, b| (*a - *b).abs() < 1e-6);
    if edges.len() <= MAX_AXIS_CELLS + 1 {
        return edges.clone();
    }
    let (lo, hi) = (edges[0], edges[edges.len() - 1]);
    (0..=MAX_AXIS_CELLS)
        .map(|i| lo + (hi - lo) * i as f32 / MAX_AXIS_CELLS as f32)
        .collect()
}

/// Indices `[first, last)` of the intervals of `bounds` whose centres lie in `[lo, hi]`.
fn cell_range(bounds: &[f32], lo: f32, hi: f32) -> (usize, usize) {
    let mut first = usize::MAX;
    let mut last = 0;
    for i in 0..bounds.len().saturating_sub(1) {
        let c = 0.5 * (bounds[i] + bounds[i + 1]);
        if c >= lo && c <= hi {
            first = first.min(i);
            last = i + 1;
        }
    }
    if first == usize::MAX {
        (0, 0)
    } else {
        (first, last)
    }
}

/// How much of the image the mask hides: the area covered by regions but by no visible
/// region, as a share of the area covered by all regions. Kept incrementally as regions are
/// masked (per-cell count of visible regions).
struct HiddenArea {
    nx: usize,
    cell_area: Vec<f32>,
    visible_count: Vec<u32>,
    /// Per region (index into `locations`): the cell ranges `(x0, x1, y0, y1)` it covers.
    cells: Vec<(usize, usize, usize, usize)>,
    total: f32,
    hidden: f32,
}

impl HiddenArea {
    fn new(locations: &[[f32; 5]]) -> Self {
        let regions = &locations[1..];
        let mut xs: Vec<f32> = regions.iter().flat_map(|r| [r[0], r[2]]).collect();
        let mut ys: Vec<f32> = regions.iter().flat_map(|r| [r[1], r[3]]).collect();
        let bx = axis_partition(&mut xs);
        let by = axis_partition(&mut ys);
        let nx = bx.len().saturating_sub(1);
        let ny = by.len().saturating_sub(1);
        let mut cell_area = vec![0.0; nx * ny];
        for j in 0..ny {
            for i in 0..nx {
                cell_area[j * nx + i] = (bx[i + 1] - bx[i]) * (by[j + 1] - by[j]);
            }
        }
        let mut visible_count = vec![0u32; nx * ny];
        let mut cells = vec![(0, 0, 0, 0)];
        for r in regions {
            let (x0, x1) = cell_range(&bx, r[0], r[2]);
            let (y0, y1) = cell_range(&by, r[1], r[3]);
            for j in y0..y1 {
                for i in x0..x1 {
                    visible_count[j * nx + i] += 1;
                }
            }
            cells.push((x0, x1, y0, y1));
        }
        let total = cell_area
            .iter()
            .zip(&visible_count)
            .filter(|(_, &c)| c > 0)
            .map(|(a, _)| a)
            .sum();
        Self { nx, cell_area, visible_count, cells, total, hidden: 0.0 }
    }

    /// Whether the regions cover any area at all (else the mask falls back to counting).
    fn has_area(&self) -> bool {
        self.total > 1e-9
    }

    /// The hidden share of the covered area.
    fn share(&self) -> f32 {
        self.hidden / self.total
    }

    /// Masks (`hide`) or unmasks region `r`, updating the hidden area.
    fn set(&mut self, r: usize, hide: bool) {
        let (x0, x1, y0, y1) = self.cells[r];
        for j in y0..y1 {
            for i in x0..x1 {
                let k = j * self.nx + i;
                if hide {
                    self.visible_count[k] -= 1;
                    if self.visible_count[k] == 0 {
                        self.hidden += self.cell_area[k];
                    }
                } else {
                    if self.visible_count[k] == 0 {
                        self.hidden -= self.cell_area[k];
                    }
                    self.visible_count[k] += 1;
                }
            }
        }
    }
}

/// Anchor masking of regions by coverage, for masked region modelling that hides what it
/// masks. Row 0 (the global `[IMG]` entry) is never masked; returns one flag per row.
///
/// Anchors among rows 1.. are tried in random order. An anchor is masked together with the
/// closure of the coverage rule: every region that covers more than `threshold` of a masked
/// region's own area is masked too (so a 6x6 pyramid cell takes the 4x4, 3x3, 2x2 and 1x1
/// boxes around it, which would otherwise show it at a coarser scale), repeated until no
/// visible region covers more than `threshold` of a masked one. The anchor is kept when it
/// brings the hidden share of the image (the area covered by regions but by no visible
/// region) closer to `ratio`, else undone; at least one anchor is always kept. Regions
/// without any area fall back to counting masked regions against `ratio`.
pub(crate) fn anchor_mask<R: Rng>(
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
    let mut order: Vec<usize> = (1..rows).collect();
    // Fisher-Yates shuffle: anchors are tried in random order.
    for i in (1..order.len()).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    let mut area = HiddenArea::new(locations);
    let by_area = area.has_area();
    let regions = (rows - 1) as f32;
    let mut count = 0usize;
    let mut share = 0.0f32;
    let mut added = Vec::new();
    for &anchor in &order {
        // Masking more never lowers the share, so once it has reached the ratio no later
        // anchor can bring it closer: the rest would all be tried and undone.
        if share >= ratio {
            break;
        }
        if masked[anchor] {
            continue;
        }
        close_over(&mut masked, locations, threshold, anchor, &mut added);
        let new_share = if by_area {
            added.iter().for_each(|&r| area.set(r, true));
            area.share()
        } else {
            (count + added.len()) as f32 / regions
        };
        if (new_share - ratio).abs() < (share - ratio).abs() {
            share = new_share;
            count += added.len();
        } else {
            for &r in &added {
                masked[r] = false;
                if by_area {
                    area.set(r, false);
                }
            }
        }
    }
    if count == 0 {
        // No anchor brought the share closer (a single region, say): keep the first anchor
        // with its closure anyway, so that every image has a target.
        close_over(&mut masked, locations, threshold, order[0], &mut added);
    }
    masked
}

/// Masks `anchor` and the closure of the coverage rule from it (every visible region that
/// covers more than `threshold` of a masked region's area), listing what it masked in `added`.
fn close_over(
    masked: &mut [bool],
    locations: &[[f32; 5]],
    threshold: f32,
    anchor: usize,
    added: &mut Vec<usize>,
) {
    added.clear();
    masked[anchor] = true;
    added.push(anchor);
    let mut next = 0;
    while next < added.len() {
        let m = added[next];
        next += 1;
        for v in 1..masked.len() {
            if !masked[v] && coverage(&locations[m], &locations[v]) > threshold + COVERAGE_SLACK {
                masked[v] = true;
                added.push(v);
            }
        }
    }
}

#[cfg(test)]
mod tests;
