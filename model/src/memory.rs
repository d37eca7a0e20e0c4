//! Where UNIMO's retrieved image positives come from in a GPU-shaped step: a bounded window
//! of recent image-only examples kept on the device (MODEL.md, objective 4: "extra positives
//! by retrieval ... online from a bounded recent window").
//!
//! Nothing here costs an evaluation pass or an extra read. Each step:
//! - every pair's image embedding from this step's own forward pass (no gradient) is compared
//!   with the window's kept embeddings, on the device; each pair takes its `positives`
//!   nearest kept images at cosine `>= min_similarity` ([`retrieve`]);
//! - the retrieved images' *features* are gathered from the device-side window and encoded in
//!   the same step, with a gradient, by a second visual-encoder call over `pairs x k` rows (the
//!   padding bias gathered on the device too): a retrieved positive moves with the model, as
//!   an extra image encoded in the batch did. (A memory bank whose kept embeddings serve as
//!   constant positives was measured to collapse the contrastive space; BENCHMARKS.md.)
//!   A retrieved image is a positive of every pair that retrieved it and, like any image
//!   candidate, a negative of the other captions; one that no pair retrieved above the
//!   threshold is in nobody's denominator;
//! - after the update is applied, the embeddings of this step's image-only rows (computed in
//!   the step, from the rows masked region modelling trains) enter the window with their
//!   unmasked features (ring order; an image kept already is overwritten in place), and the
//!   retrieved entries' embeddings are replaced by the fresh ones the step computed for them,
//!   all with device-side writes. The host keeps only each slot's image key and row count.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::attention_mask::BLOCKED;
use crate::plan::ImageRows;

/// Settings of the image window (part of [`crate::TrainSettings`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageMemorySettings {
    /// Image-only examples kept (0: no image retrieval).
    pub capacity: usize,
    /// Positives retrieved per pair, at most (0: no image retrieval).
    pub positives: usize,
    /// Smallest cosine between a pair's image and a kept image that makes a positive.
    pub min_similarity: f32,
}

impl Default for ImageMemorySettings {
    fn default() -> Self {
        Self { capacity: 0, positives: 1, min_similarity: 0.9 }
    }
}

impl ImageMemorySettings {
    /// Whether the step retrieves image positives at all.
    pub fn enabled(&self) -> bool {
        self.capacity > 0 && self.positives > 0
    }

    /// Positives taken per pair: `positives`, at most `capacity`.
    pub(crate) fn k(&self) -> usize {
        self.positives.min(self.capacity)
    }
}

/// The window's device tensors (allocated at the first insert).
#[derive(Debug, Clone)]
struct Slots<B: Backend> {
    /// `[capacity, max_objects, feature_dim]`, unmasked features (zeros past a slot's rows).
    features: Tensor<B, 3>,
    /// `[capacity, max_objects, 5]`.
    locations: Tensor<B, 3>,
    /// `[capacity, pooled]`, L2-normalised (zeros in empty slots).
    embeddings: Tensor<B, 2>,
}

/// The window: device tensors, and on the host which image each slot holds.
#[derive(Debug, Clone)]
pub(crate) struct ImageMemory<B: Backend> {
    settings: ImageMemorySettings,
    pooled: usize,
    feature_dim: usize,
    max_objects: usize,
    slots: Option<Slots<B>>,
    /// The image key ([`crate::positives::image_key`]) and visual rows of each filled slot.
    keys: Vec<Option<(u64, usize)>>,
    /// The slot written next once the window is full.
    next: usize,
}

/// The window as one step sees it (taken at the step's start), on the step's backend.
#[derive(Debug, Clone)]
pub(crate) struct MemoryTensors<B: Backend> {
    /// `[capacity, n, feature_dim]` and `[capacity, n, 5]`, `n` the bucketed longest kept
    /// image.
    pub(crate) features: Tensor<B, 3>,
    pub(crate) locations: Tensor<B, 3>,
    /// `[capacity, n]`: 0 on a slot's rows, [`BLOCKED`] past them (key padding).
    pub(crate) row_bias: Tensor<B, 2>,
    /// `[capacity, pooled]`.
    pub(crate) embeddings: Tensor<B, 2>,
    /// `[capacity]`: 0 for a filled slot, [`BLOCKED`] for an empty one.
    pub(crate) empty_bias: Tensor<B, 1>,
    /// Positives per pair and their threshold.
    pub(crate) k: usize,
    pub(crate) min_similarity: f32,
}

impl<B: Backend> ImageMemory<B> {
    /// An empty window for images of `feature_dim` features and at most `max_objects` rows,
    /// kept as `pooled`-wide embeddings.
    pub(crate) fn new(settings: ImageMemorySettings, pooled: usize, feature_dim: usize, max_objects: usize) -> Self {
        let capacity = if settings.enabled() { settings.capacity } else { 0 };
        Self { settings, pooled, feature_dim, max_objects, slots: None, keys: vec![None; capacity], next: 0 }
    }

    /// Whether the step should keep its image-only embeddings for the window.
    pub(crate) fn collects(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Filled slots.
    pub(crate) fn len(&self) -> usize {
        self.keys.iter().filter(|k| k.is_some()).count()
    }

    /// The window for one step, narrowed to the bucketed longest kept image (`buckets` as
    /// [`crate::settings::TrainSettings::object_buckets`]); `None` while it is empty.
    pub(crate) fn tensors<A: Backend>(
        &self,
        buckets: &[usize],
        lift: impl Fn(Tensor<B, 3>) -> Tensor<A, 3>,
        lift2: impl Fn(Tensor<B, 2>) -> Tensor<A, 2>,
        device: &A::Device,
    ) -> Option<MemoryTensors<A>> {
        let slots = self.slots.as_ref()?;
        let longest = self.keys.iter().flatten().map(|&(_, rows)| rows).max()?;
        let n = crate::settings::bucket_len(buckets, longest, self.max_objects);
        let c = self.keys.len();
        let mut row_bias = vec![BLOCKED; c * n];
        let mut empty_bias = vec![BLOCKED; c];
        for (s, key) in self.keys.iter().enumerate() {
            // An empty slot keeps one visible row, so that its (never used) encoding is finite.
            let rows = key.map_or(1, |(_, rows)| rows.min(n));
            row_bias[s * n..s * n + rows].fill(0.0);
            if key.is_some() {
                empty_bias[s] = 0.0;
            }
        }
        Some(MemoryTensors {
            features: lift(slots.features.clone().narrow(1, 0, n)),
            locations: lift(slots.locations.clone().narrow(1, 0, n)),
            row_bias: Tensor::from_data(TensorData::new(row_bias, [c, n]), device),
            embeddings: lift2(slots.embeddings.clone()),
            empty_bias: Tensor::from_data(TensorData::new(empty_bias, [c]), device),
            k: self.settings.k(),
            min_similarity: self.settings.min_similarity,
        })
    }

    /// Keeps `images[i]` (unmasked rows, with key) and its embedding, row `i` of
    /// `embeddings` (`[>= images.len(), pooled]`, on the device): in place when that image is
    /// kept already, else in the next slot (ring order).
    pub(crate) fn insert(&mut self, images: &[(u64, ImageRows)], embeddings: Tensor<B, 2>) {
        if self.keys.is_empty() || images.is_empty() {
            return;
        }
        let device = embeddings.device();
        let (c, m, f, n) = (self.keys.len(), images.len(), self.feature_dim, self.max_objects);
        // Taken by value, so that each write below owns its tensor and updates it in place
        // (a write to a shared tensor copies it whole).
        let Slots { mut features, mut locations, embeddings: mut kept } = self.slots.take().unwrap_or_else(|| Slots {
            features: Tensor::zeros([c, n, f], &device),
            locations: Tensor::zeros([c, n, 5], &device),
            embeddings: Tensor::zeros([c, self.pooled], &device),
        });
        // One upload for all new images.
        let mut feats = vec![0.0f32; m * n * f];
        let mut locs = vec![0.0f32; m * n * 5];
        for (i, (_, image)) in images.iter().enumerate() {
            let rows = image.rows().min(n);
            feats[i * n * f..i * n * f + rows * f].copy_from_slice(&image.features[..rows * f]);
            for (r, loc) in image.locations.iter().take(rows).enumerate() {
                locs[(i * n + r) * 5..(i * n + r + 1) * 5].copy_from_slice(loc);
            }
        }
        let feats = Tensor::<B, 3>::from_data(TensorData::new(feats, [m, n, f]), &device);
        let locs = Tensor::<B, 3>::from_data(TensorData::new(locs, [m, n, 5]), &device);
        for (i, (key, image)) in images.iter().enumerate() {
            let slot = match self.keys.iter().position(|k| k.map(|(k, _)| k) == Some(*key)) {
                Some(s) => s,
                None => {
                    let s = self.next;
                    self.next = (self.next + 1) % c;
                    s
                }
            };
            self.keys[slot] = Some((*key, image.rows().min(n).max(1)));
            features = features.slice_assign([slot..slot + 1, 0..n, 0..f], feats.clone().narrow(0, i, 1));
            locations = locations.slice_assign([slot..slot + 1, 0..n, 0..5], locs.clone().narrow(0, i, 1));
            kept = kept.slice_assign([slot..slot + 1, 0..self.pooled], embeddings.clone().narrow(0, i, 1));
        }
        self.slots = Some(Slots { features, locations, embeddings: kept });
    }

    /// Replaces the kept embeddings of the slots at `indices` (`[r]`) by `fresh` (`[r,
    /// pooled]`) where `valid` (`[r]`, 0 or 1) is 1; a slot named more than once takes the
    /// mean. All on the device.
    pub(crate) fn refresh(&mut self, Refresh { indices, fresh, valid }: Refresh<B>) {
        let Some(slots) = self.slots.as_mut() else { return };
        let kept = std::mem::replace(&mut slots.embeddings, Tensor::zeros([1, 1], &fresh.device()));
        let c = self.keys.len();
        let r = indices.dims()[0];
        let device = fresh.device();
        let columns = Tensor::<B, 1, Int>::arange(0..c as i64, &device).reshape([1, c]).expand([r, c]);
        // `[r, c]`: row i is the one-hot of slot indices[i], zero where not valid.
        let hits = indices.reshape([r, 1]).expand([r, c]).equal(columns).float() * valid.reshape([r, 1]);
        let count = hits.clone().sum_dim(0).reshape([c, 1]);
        let sum = hits.transpose().matmul(fresh);
        let keep = count.clone().equal_elem(0.0).float();
        slots.embeddings = kept * keep + sum / count.clamp_min(1.0);
    }
}

/// What a step computed for the entries it retrieved ([`ImageMemory::refresh`]): their slots
/// (`[r]`), their fresh embeddings (`[r, pooled]`), and 1 where one may replace the kept
/// embedding (`[r]`).
#[derive(Debug, Clone)]
pub(crate) struct Refresh<B: Backend> {
    pub(crate) indices: Tensor<B, 1, Int>,
    pub(crate) fresh: Tensor<B, 2>,
    pub(crate) valid: Tensor<B, 1>,
}

/// The result of retrieval for one micro-batch, on the device.
pub(crate) struct Retrieval<B: Backend> {
    /// `[p * k]`: the slot of each pair's `k` nearest kept images (pair-major).
    pub(crate) indices: Tensor<B, 1, Int>,
    /// `[p, p * k]`: 0 where retrieved image `j` is a positive of pair `i` (pair `i` itself
    /// retrieved that slot above the threshold), [`BLOCKED`] elsewhere.
    pub(crate) positive_bias: Tensor<B, 2>,
    /// `[1, p * k]`: 0 where retrieved image `j` was retrieved above the threshold by its
    /// pair (a candidate of every caption), [`BLOCKED`] elsewhere.
    pub(crate) candidate_bias: Tensor<B, 2>,
    /// `[p * k]`: the similarity where retrieved above the threshold, -2 elsewhere: read back
    /// for the counters.
    pub(crate) similarities: Tensor<B, 1>,
    /// `[p * k]`: 1 where the retrieved slot is filled and its pair real (its fresh embedding
    /// may replace the kept one), else 0.
    pub(crate) filled: Tensor<B, 1>,
}

/// Retrieves each real pair's `memory.k` nearest kept images.
///
/// # Shapes
/// - `anchors`: `[p, pooled]` (L2-normalised pair-image embeddings, no gradient needed);
///   the first `real` anchors are pairs, the rest padding.
pub(crate) fn retrieve<B: Backend>(anchors: Tensor<B, 2>, memory: &MemoryTensors<B>, real: usize) -> Retrieval<B> {
    let [p, _] = anchors.dims();
    let c = memory.embeddings.dims()[0];
    let device = anchors.device();
    let k = memory.k.clamp(1, c);
    let sims = anchors.matmul(memory.embeddings.clone().transpose()) + memory.empty_bias.clone().unsqueeze_dim(0);
    let columns = Tensor::<B, 1, Int>::arange(0..c as i64, &device).reshape([1, c]).expand([p, c]);
    let mut real_rows = vec![0.0f32; p];
    real_rows[..real.min(p)].fill(1.0);
    let real_rows = Tensor::<B, 1>::from_data(TensorData::new(real_rows, [p]), &device).reshape([p, 1]);
    // The k maxima one at a time (k is small); each taken column is then excluded.
    let mut rest = sims;
    let (mut tops, mut idxs, mut chosen) = (Vec::with_capacity(k), Vec::with_capacity(k), None::<Tensor<B, 2>>);
    for _ in 0..k {
        let (top, idx) = rest.clone().max_dim_with_indices(1);
        let one_hot = idx.clone().expand([p, c]).equal(columns.clone());
        let pass = top.clone().greater_equal_elem(memory.min_similarity).float() * real_rows.clone();
        let picked = one_hot.clone().float() * pass.expand([p, c]);
        chosen = Some(match chosen {
            Some(ch) => ch + picked,
            None => picked,
        });
        rest = rest.mask_fill(one_hot, 2.0 * BLOCKED);
        tops.push(top);
        idxs.push(idx);
    }
    let top = Tensor::cat(tops, 1);
    let indices = Tensor::cat(idxs, 1).reshape([p * k]);
    let pass = top.clone().greater_equal_elem(memory.min_similarity).float() * real_rows.clone();
    let chosen = chosen.expect("k >= 1");
    let to_bias = |m: Tensor<B, 2>| m.neg().add_scalar(1.0).mul_scalar(BLOCKED);
    // Column j (pair q's m-th retrieval) is a positive of pair i when i chose that slot and
    // the column itself is a real retrieval above the threshold: a padding pair's copy of a
    // slot, or one below its own pair's threshold, is in nobody's loss.
    let passing = pass.clone().reshape([1, p * k]);
    let positive = chosen.select(1, indices.clone()).clamp_max(1.0) * passing.clone().expand([p, p * k]);
    let filled = (top.clone().greater_elem(BLOCKED / 2.0).float() * real_rows).reshape([p * k]);
    Retrieval {
        indices,
        positive_bias: to_bias(positive),
        candidate_bias: to_bias(passing),
        similarities: ((top.add_scalar(2.0) * pass).sub_scalar(2.0)).reshape([p * k]),
        filled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    fn unit(v: [f32; 2]) -> Vec<f32> {
        let n = (v[0] * v[0] + v[1] * v[1]).sqrt();
        vec![v[0] / n, v[1] / n]
    }

    fn image(value: f32, rows: usize) -> ImageRows {
        ImageRows { features: vec![value; rows * 3], locations: vec![[0.0, 0.0, 1.0, 1.0, 1.0]; rows] }
    }

    fn rows(t: Tensor<NdArray, 2>) -> Vec<Vec<f32>> {
        let [r, c] = t.dims();
        let v: Vec<f32> = t.into_data().to_vec().expect("f32");
        (0..r).map(|i| v[i * c..(i + 1) * c].to_vec()).collect()
    }

    fn memory(capacity: usize, positives: usize, min_similarity: f32) -> ImageMemory<NdArray> {
        ImageMemory::new(ImageMemorySettings { capacity, positives, min_similarity }, 2, 3, 4)
    }

    fn embeddings(v: &[Vec<f32>]) -> Tensor<NdArray, 2> {
        Tensor::from_data(TensorData::new(v.concat(), [v.len(), 2]), &Default::default())
    }

    fn view(m: &ImageMemory<NdArray>) -> MemoryTensors<NdArray> {
        m.tensors(&[2, 4], |t| t, |t| t, &Default::default()).expect("a filled window")
    }

    #[test]
    fn the_window_keeps_one_slot_per_image_in_ring_order_with_its_features() {
        let mut m = memory(2, 1, 0.5);
        assert!(m.tensors::<NdArray>(&[2, 4], |t| t, |t| t, &Default::default()).is_none());
        m.insert(&[(1, image(1.0, 1))], embeddings(&[vec![1.0, 0.0]]));
        m.insert(&[(1, image(1.5, 1))], embeddings(&[vec![0.0, 1.0]]));
        assert_eq!(m.len(), 1, "the same image is overwritten in place");
        m.insert(&[(2, image(2.0, 3)), (3, image(3.0, 2))], embeddings(&[vec![1.0, 0.0], vec![0.6, 0.8]]));
        assert_eq!(m.len(), 2);
        assert_eq!(m.keys, vec![Some((3, 2)), Some((2, 3))], "the oldest slot is replaced");
        let v = view(&m);
        // The longest kept image has 3 rows: bucket 4.
        assert_eq!(v.features.dims(), [2, 4, 3]);
        let f: Vec<f32> = v.features.into_data().to_vec().expect("f32");
        assert_eq!(&f[..12], &[3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&f[12..], &[2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0]);
        assert_eq!(rows(v.row_bias), vec![vec![0.0, 0.0, BLOCKED, BLOCKED], vec![0.0, 0.0, 0.0, BLOCKED]]);
        assert_eq!(rows(v.embeddings), vec![vec![0.6, 0.8], vec![1.0, 0.0]]);
        assert!(!memory(0, 1, 0.5).collects());
    }

    #[test]
    fn retrieval_takes_the_nearest_above_the_threshold_for_real_pairs_only() {
        let mut m = memory(3, 1, 0.9);
        m.insert(&[(10, image(1.0, 1)), (11, image(2.0, 1))], embeddings(&[unit([1.0, 0.0]), unit([0.0, 1.0])]));
        let mem = view(&m);
        // Pair 0 is close to slot 0, pair 1 nearer slot 0 but below 0.9, row 2 is padding.
        let anchors = embeddings(&[unit([1.0, 0.1]), unit([1.0, 0.8]), unit([0.0, 1.0])]);
        let r = retrieve(anchors, &mem, 2);
        let idx: Vec<i64> = r.indices.into_data().convert::<i64>().to_vec().expect("ints");
        assert_eq!(&idx[..2], &[0, 0], "each pair's nearest filled slot");
        let b = BLOCKED;
        // Pair 1's copy of slot 0 (below its own threshold) is not pair 0's positive either.
        assert_eq!(rows(r.positive_bias), vec![vec![0.0, b, b], vec![b, b, b], vec![b, b, b]]);
        assert_eq!(rows(r.candidate_bias), vec![vec![0.0, b, b]], "only pair 0 retrieved above the threshold");
        let sims: Vec<f32> = r.similarities.into_data().to_vec().expect("f32");
        assert!((sims[0] - unit([1.0, 0.1])[0]).abs() < 1e-6, "{sims:?}");
        assert_eq!(&sims[1..], &[-2.0, -2.0]);
        let filled: Vec<f32> = r.filled.into_data().to_vec().expect("f32");
        assert_eq!(filled, vec![1.0, 1.0, 0.0], "padding rows never refresh the window");
    }

    #[test]
    fn two_positives_per_pair_skip_empty_slots_and_refresh_writes_back() {
        let mut m = memory(3, 2, -1.0);
        m.insert(&[(10, image(1.0, 1))], embeddings(&[unit([1.0, 0.0])]));
        let mem = view(&m);
        let r = retrieve(embeddings(&[unit([1.0, 0.2])]), &mem, 1);
        let b = BLOCKED;
        // The second-nearest is an empty slot: never a candidate, never refreshed.
        assert_eq!(rows(r.candidate_bias), vec![vec![0.0, b]]);
        let filled: Vec<f32> = r.filled.clone().into_data().to_vec().expect("f32");
        assert_eq!(filled, vec![1.0, 0.0]);
        m.refresh(Refresh { indices: r.indices, fresh: embeddings(&[unit([0.0, 1.0]), vec![7.0, 7.0]]), valid: r.filled });
        assert_eq!(rows(view(&m).embeddings), vec![unit([0.0, 1.0]), vec![0.0, 0.0], vec![0.0, 0.0]]);
    }
}
