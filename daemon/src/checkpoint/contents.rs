//! What a checkpoint holds besides its metadata, and reading it back ([`Restored`]).
//!
//! Blobs of a checkpoint: `model`, `optimizer` (burn records), `model_config` (JSON),
//! `tokenizer` (tokenizer.json), `replay` (binary), `state` (JSON: trainer step counters).

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use unimod_ingest::offsets::PartitionOffsets;
use unimod_model::TrainerState;

use super::{CheckpointMeta, RecordCounts};

/// Blob names.
pub mod blob {
    /// burn model record.
    pub const MODEL: &str = "model";
    /// burn optimizer record.
    pub const OPTIMIZER: &str = "optimizer";
    /// Model config JSON.
    pub const MODEL_CONFIG: &str = "model_config";
    /// tokenizer.json.
    pub const TOKENIZER: &str = "tokenizer";
    /// Replay buffers.
    pub const REPLAY: &str = "replay";
    /// Trainer counters (JSON).
    pub const STATE: &str = "state";
}

/// The `state` blob: trainer counters.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct TrainerCounters {
    pub(super) steps_applied: u64,
}

/// A checkpoint read back for a resume, `eval` or `export`.
pub struct Restored {
    /// Its metadata.
    pub meta: CheckpointMeta,
    /// Model, optimizer and config.
    pub trainer: TrainerState,
    /// Encoded replay buffers (may be empty).
    pub replay: Vec<u8>,
    /// tokenizer.json.
    pub tokenizer_json: String,
}

impl Restored {
    /// Assembles a checkpoint from its metadata and named blobs.
    pub fn from_blobs(meta: CheckpointMeta, mut get: impl FnMut(&str) -> Option<Vec<u8>>) -> anyhow::Result<Self> {
        let mut need = |name: &str| get(name).with_context(|| format!("checkpoint {} has no {name} blob", meta.id));
        let model = need(blob::MODEL)?;
        let optimizer = need(blob::OPTIMIZER)?;
        let config_json = String::from_utf8(need(blob::MODEL_CONFIG)?).context("model config is not UTF-8")?;
        let tokenizer_json = String::from_utf8(need(blob::TOKENIZER)?).context("tokenizer is not UTF-8")?;
        let counters: TrainerCounters =
            serde_json::from_slice(&need(blob::STATE)?).context("trainer counters")?;
        // Not needed by eval or export (and not fetched by them).
        let replay = get(blob::REPLAY).unwrap_or_default();
        Ok(Self {
            meta,
            trainer: TrainerState { config_json, model, optimizer, steps_applied: counters.steps_applied },
            replay,
            tokenizer_json,
        })
    }

    /// The lineage counts of this checkpoint.
    pub fn counts(&self) -> RecordCounts {
        self.meta.records
    }

    /// Per-partition progress of this checkpoint.
    pub fn progress(&self) -> Vec<PartitionOffsets> {
        self.meta.offsets.clone()
    }
}
