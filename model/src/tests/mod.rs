//! Unit tests over the crate's private planning and encoding (moved from `tests/model/` when
//! `plan`, `group_tensors`, `masking` and `attention_mask` became private): attention masks
//! by perturbation, ViLBERT's streams, and static-shape steps.

mod gpu_step;
mod masks;
mod memory;
mod threads;
mod vilbert;

/// The integration tests' fixtures (`tests/model/fixtures.rs`).
#[allow(dead_code)]
pub(crate) mod common {
    use crate::{Arch, Example, ModelConfig, SpecialTokens, StepReport, TrainSettings, VisualInput};

    include!("../../tests/model/fixtures.rs");
}
