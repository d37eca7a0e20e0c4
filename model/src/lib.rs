//! UNIMO and ViLBERT in burn: architectures, pretraining objectives, and a training step
//! for continual pretraining from a stream.
//!
//! The daemon builds a [`ModelConfig`], wraps it in a [`Trainer`] on some autodiff backend,
//! calls [`Trainer::step`] once per optimizer step with plain-data [`Example`]s, stores
//! [`Trainer::save`]'s bytes in its checkpoints, and uses [`Trainer::embed_images`] /
//! [`Trainer::embed_texts`] (UNIMO) or [`Trainer::match_scores`] (both; ViLBERT's
//! alignment prediction) for retrieval. Nothing here knows about Kafka or storage.

pub(crate) mod attention_mask;
mod autodiff_lock;
pub mod backend;
pub mod config;
pub mod error;
pub mod generate;
pub mod example;
pub mod export;
pub(crate) mod group_tensors;
pub mod heads;
pub mod layout;
pub mod memory;
pub(crate) mod masking;
pub mod model;
pub mod nn;
pub mod objectives;
pub mod optimizer;
pub(crate) mod plan;
pub mod positives;
pub mod readback;
pub mod retrieval;
pub mod settings;
pub mod trainer;
pub mod unimo;
pub mod vilbert;

pub use config::{Arch, ModelConfig, Objective, ObjectiveWeights, SpecialTokens, VilbertDims};
pub use error::ModelError;
pub use generate::{DecodeOptions, Generated, Inference};
pub use example::{Example, ExampleKind, VisualInput};
pub use retrieval::cosine_top_k;
pub use layout::ShapePolicy;
pub use memory::ImageMemorySettings;
pub use settings::TrainSettings;
pub use trainer::{StepReport, Trainer, TrainerState};

pub use autodiff_lock::autodiff_lock;
pub use backend::CpuBackend;

#[cfg(test)]
mod tests;
