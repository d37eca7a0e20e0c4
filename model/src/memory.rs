//! Where UNIMO's retrieved image positives come from on a GPU-shaped step: a bounded window
//! of recent image-only examples, kept as their pooled, projected embeddings from the step
//! that trained them (MODEL.md, objective 4: "extra positives by retrieval ... online from a
//! bounded recent window").
//!
//! Nothing here costs an extra pass or an extra read. Each step:
//! - the window goes to the device as one `[capacity, pooled]` tensor (zeros where empty;
//!   one fixed shape, so no new kernel on a JIT backend);
//! - the CMCL block compares every pair's image embedding (from this step's own forward, no
//!   gradient) with the window, takes each pair's `positives` nearest entries at cosine
//!   `>= min_similarity`, and adds them to the caption's positives (text-to-image direction);
//!   retrieved entries are candidates of every caption, as an encoded extra image was;
//! - the embeddings of this step's image-only rows (the rows masked region modelling trains,
//!   so about 15% of their regions are hidden) and the retrieved similarities travel in the
//!   step's one read-back, and enter the window after the update is applied.
//!
//! A kept embedding is a constant: the gradient reaches the caption, not the window (a memory
//! bank, as in MoCo). Entries are replaced as new image-only records arrive (ring order; an
//! image already kept is overwritten in place), so an entry is at most `capacity /
//! image-only-records-per-step` steps old.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::attention_mask::BLOCKED;

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
        Self {
            capacity: 0,
            positives: 1,
            min_similarity: 0.9,
        }
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

/// The window on the host: one row per slot, and which image each slot holds.
#[derive(Debug, Clone)]
pub(crate) struct ImageMemory {
    settings: ImageMemorySettings,
    dim: usize,
    /// `capacity x dim`, zero in empty slots.
    embeddings: Vec<f32>,
    /// The image key ([`crate::positives::image_key`]) of each slot's image.
    keys: Vec<Option<u64>>,
    /// The slot written next once the window is full.
    next: usize,
}

/// The window on the device, for one step.
#[derive(Debug, Clone)]
pub(crate) struct MemoryTensors<B: Backend> {
    /// `[capacity, pooled]`: kept embeddings (zeros in empty slots).
    pub(crate) embeddings: Tensor<B, 2>,
    /// `[capacity]`: 0 for a filled slot, [`BLOCKED`] for an empty one.
    pub(crate) empty_bias: Tensor<B, 1>,
    /// Positives per pair and their threshold.
    pub(crate) k: usize,
    pub(crate) min_similarity: f32,
}

impl ImageMemory {
    /// An empty window of `settings.capacity` slots of width `dim`.
    pub(crate) fn new(settings: ImageMemorySettings, dim: usize) -> Self {
        let capacity = if settings.enabled() {
            settings.capacity
        } else {
            0
        };
        Self {
            settings,
            dim,
            embeddings: vec![0.0; capacity * dim],
            keys: vec![None; capacity],
            next: 0,
        }
    }

    /// Whether image-only rows should be read back for the window.
    pub(crate) fn collects(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Filled slots.
    pub(crate) fn len(&self) -> usize {
        self.keys.iter().filter(|k| k.is_some()).count()
    }

    /// The window as device tensors, or `None` while it is empty (or disabled).
    pub(crate) fn tensors<B: Backend>(&self, device: &B::Device) -> Option<MemoryTensors<B>> {
        if self.len() == 0 {
            return None;
        }
        let c = self.keys.len();
        let bias: Vec<f32> = self
            .keys
            .iter()
            .map(|k| if k.is_some() { 0.0 } else { BLOCKED })
            .collect();
        Some(MemoryTensors {
            embeddings: Tensor::from_data(
                TensorData::new(self.embeddings.clone(), [c, self.dim]),
                device,
            ),
            empty_bias: Tensor::from_data(TensorData::new(bias, [c]), device),
            k: self.settings.k(),
            min_similarity: self.settings.min_similarity,
        })
    }

    /// Keeps `embedding` for the image `key`: in place when that image is kept already, else
    /// in the next slot (ring order). Non-finite embeddings are not kept.
    pub(crate) fn insert(&mut self, key: u64, embedding: &[f32]) {
        if self.keys.is_empty()
            || embedding.len() != self.dim
            || embedding.iter().any(|x| !x.is_finite())
        {
            return;
        }
        let slot = match self.keys.iter().position(|k| *k == Some(key)) {
            Some(s) => s,
            None => {
                let s = self.next;
                self.next = (self.next + 1) % self.keys.len();
                s
            }
        };
        self.keys[slot] = Some(key);
        self.embeddings[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(embedding);
    }
}

/// The result of retrieval for one micro-batch, on the device.
pub(crate) struct Retrieval<B: Backend> {
    /// `[p, capacity]`: 0 where the kept image is a positive of pair `i`, [`BLOCKED`] elsewhere.
    pub(crate) positive_bias: Tensor<B, 2>,
    /// `[1, capacity]`: 0 where some pair retrieved the kept image (a candidate of every
    /// caption), [`BLOCKED`] elsewhere.
    pub(crate) candidate_bias: Tensor<B, 2>,
    /// `[p * k]`: the similarity of each pair's `k` nearest kept images where retrieved,
    /// -2 where not (padding pairs, empty slots, below the threshold): read back for the
    /// counters.
    pub(crate) similarities: Tensor<B, 1>,
}

/// Retrieves each real pair's positives among the kept images.
///
/// # Shapes
/// - `anchors`: `[p, pooled]` (L2-normalised pair-image embeddings, no gradient needed),
///   `real`: the first `real` anchors are pairs, the rest padding.
pub(crate) fn retrieve<B: Backend>(
    anchors: Tensor<B, 2>,
    memory: &MemoryTensors<B>,
    real: usize,
) -> Retrieval<B> {
    let [p, _] = anchors.dims();
    let c = memory.embeddings.dims()[0];
    let device = anchors.device();
    let k = memory.k.clamp(1, c);
    let sims = anchors.matmul(memory.embeddings.clone().transpose())
        + memory.empty_bias.clone().unsqueeze_dim(0);
    // Each pair's k largest similarities, by k maxima (`topk` has no autodiff op in burn
    // 0.21; k is small), and the k-th raised to the threshold.
    let mut rest = sims.clone();
    let mut maxima = Vec::with_capacity(k);
    for _ in 0..k {
        let m = rest.clone().max_dim(1);
        rest = rest
            .clone()
            .mask_fill(rest.greater_equal(m.clone().expand([p, c])), 2.0 * BLOCKED);
        maxima.push(m);
    }
    let top = Tensor::cat(maxima, 1);
    let bar = top
        .clone()
        .narrow(1, k - 1, 1)
        .clamp_min(memory.min_similarity);
    let mut real_rows = vec![0.0f32; p];
    real_rows[..real.min(p)].fill(1.0);
    let real_rows =
        Tensor::<B, 1>::from_data(TensorData::new(real_rows, [p]), &device).unsqueeze_dim::<2>(1);
    let chosen = sims.greater_equal(bar.expand([p, c])).float() * real_rows.clone();
    let any = chosen.clone().sum_dim(0).greater_elem(0.0).float();
    let to_bias = |m: Tensor<B, 2>| m.neg().add_scalar(1.0).mul_scalar(BLOCKED);
    let kept = top
        .clone()
        .greater_equal_elem(memory.min_similarity)
        .float()
        * real_rows;
    // kept ? top : -2
    let similarities = (top.add_scalar(2.0) * kept)
        .sub_scalar(2.0)
        .reshape([p * k]);
    Retrieval {
        positive_bias: to_bias(chosen),
        candidate_bias: to_bias(any),
        similarities,
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

    #[test]
    fn the_window_keeps_one_slot_per_image_in_ring_order() {
        let settings = ImageMemorySettings {
            capacity: 2,
            positives: 1,
            min_similarity: 0.5,
        };
        let mut m = ImageMemory::new(settings, 2);
        assert!(m.tensors::<NdArray>(&Default::default()).is_none());
        m.insert(1, &[1.0, 0.0]);
        m.insert(1, &[0.0, 1.0]);
        assert_eq!(m.len(), 1, "the same image is overwritten in place");
        m.insert(2, &[1.0, 0.0]);
        m.insert(3, &[0.6, 0.8]);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m.keys,
            vec![Some(3), Some(2)],
            "the oldest slot is replaced"
        );
        m.insert(4, &[f32::NAN, 0.0]);
        assert_eq!(
            m.keys,
            vec![Some(3), Some(2)],
            "non-finite embeddings are not kept"
        );
        let off = ImageMemory::new(
            ImageMemorySettings {
                capacity: 0,
                ..settings
            },
            2,
        );
        assert!(!off.collects());
    }

    #[test]
    fn retrieval_takes_the_nearest_above_the_threshold_for_real_pairs_only() {
        let device = Default::default();
        let settings = ImageMemorySettings {
            capacity: 3,
            positives: 1,
            min_similarity: 0.9,
        };
        let mut m = ImageMemory::new(settings, 2);
        m.insert(10, &unit([1.0, 0.0]));
        m.insert(11, &unit([0.0, 1.0]));
        let mem = m.tensors::<NdArray>(&device).expect("a filled window");
        // Pair 0 is close to slot 0, pair 1 is between both (below 0.9), row 2 is padding.
        let anchors: Vec<f32> = [unit([1.0, 0.1]), unit([1.0, 1.0]), unit([0.0, 1.0])].concat();
        let anchors = Tensor::<NdArray, 2>::from_data(TensorData::new(anchors, [3, 2]), &device);
        let r = retrieve(anchors, &mem, 2);
        let pos: Vec<f32> = r.positive_bias.into_data().to_vec().expect("f32 data");
        assert_eq!(
            pos,
            vec![0.0, BLOCKED, BLOCKED, BLOCKED, BLOCKED, BLOCKED, BLOCKED, BLOCKED, BLOCKED]
        );
        let cand: Vec<f32> = r.candidate_bias.into_data().to_vec().expect("f32 data");
        assert_eq!(cand, vec![0.0, BLOCKED, BLOCKED]);
        let sims: Vec<f32> = r.similarities.into_data().to_vec().expect("f32 data");
        assert!((sims[0] - unit([1.0, 0.1])[0]).abs() < 1e-6, "{sims:?}");
        assert_eq!(&sims[1..], &[-2.0, -2.0]);
    }
}
