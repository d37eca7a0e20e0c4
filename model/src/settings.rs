//! Training settings that are not part of the model: optimizer, clipping, shape buckets, seed.

pub use crate::layout::ShapePolicy;
use crate::memory::ImageMemorySettings;

/// Settings of the training step (not saved in the model config; the daemon owns them).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSettings {
    /// Text lengths are padded up to the smallest bucket >= the longest text of a group
    /// (bounded shapes for the CUDA backend); longer texts use `max_text_len`.
    pub text_buckets: Vec<usize>,
    /// Object counts (global `[IMG]` row included) are padded the same way.
    pub object_buckets: Vec<usize>,
    /// AdamW betas (UNIMO: 0.9, 0.98).
    pub betas: (f32, f32),
    /// AdamW epsilon (UNIMO: 1e-6).
    pub eps: f32,
    /// Decoupled weight decay, applied to matrices only (not LayerNorm and biases).
    pub weight_decay: f32,
    /// Global gradient-norm clipping threshold (0 disables clipping).
    pub max_grad_norm: f32,
    /// Seed of the masking random generator and of the backend (dropout).
    pub seed: u64,
    /// How row and target counts are padded ([`ShapePolicy::Static`] for the JIT backends:
    /// few distinct shapes; [`ShapePolicy::Tight`] for the CPU: least work).
    pub shape_policy: ShapePolicy,
    /// The window of image-only examples that UNIMO's image positives are retrieved from
    /// ([`crate::memory`]; off by default).
    pub image_memory: ImageMemorySettings,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            text_buckets: vec![16, 32, 64, 128, 256, 512],
            object_buckets: vec![8, 16, 32, 64, 128],
            betas: (0.9, 0.98),
            eps: 1e-6,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            seed: 0,
            shape_policy: ShapePolicy::Tight,
            image_memory: ImageMemorySettings::default(),
        }
    }
}

/// The padded length for `len` items: the smallest bucket >= `len`, else `max`, never
/// above `max` and never below `len.min(max)`.
pub fn bucket_len(buckets: &[usize], len: usize, max: usize) -> usize {
    let len = len.min(max);
    buckets
        .iter()
        .copied()
        .filter(|&b| b >= len && b <= max)
        .min()
        .unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up_and_cap() {
        let b = [8, 16, 32];
        assert_eq!(bucket_len(&b, 3, 64), 8);
        assert_eq!(bucket_len(&b, 8, 64), 8);
        assert_eq!(bucket_len(&b, 9, 64), 16);
        assert_eq!(bucket_len(&b, 40, 64), 64);
        assert_eq!(bucket_len(&b, 100, 64), 64);
        assert_eq!(bucket_len(&b, 10, 12), 12);
        assert_eq!(bucket_len(&[], 5, 12), 12);
    }
}
