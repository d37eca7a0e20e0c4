//! Stage 1 of a session: restore the newest valid checkpoint, or start a new lineage
//! (tokenizer from `init_from`, `text.tokenizer_path` or a bootstrap sample of the stream;
//! model config from `[model]`), on the session's device.

use std::sync::Arc;

use anyhow::Context as _;
use burn::tensor::backend::AutodiffBackend;
use unimod_ingest::kafka::{bootstrap_texts, StartOffsets};
use unimod_ingest::offsets::PartitionOffsets;
use unimod_ingest::preprocess::bootstrap_text;
use unimod_ingest::record::RecordKind;
use unimod_ingest::text::TextTokenizer;
use unimod_model::{Trainer, TrainSettings};

use super::{StartupError, BOOTSTRAP_TIMEOUT};
use crate::checkpoint::{CheckpointStore, RecordCounts, Restored};
use crate::config::{parse_device, Config, DeviceChoice};
use crate::train::lineage::Lineage;
use crate::train::replay::ReplayBuffers;

/// What a session starts from: the model and the stream position of its lineage.
pub(super) struct Start<B: AutodiffBackend> {
    /// The checkpoint resumed from (`None`: a new lineage).
    pub(super) restored_from: Option<u64>,
    /// Its offsets as `topic[partition]@offset, ...` (for the rollback-loop message).
    pub(super) restored_offsets: String,
    /// Model and optimizer on the session's device.
    pub(super) trainer: Trainer<B>,
    /// The lineage's tokenizer.
    pub(super) tokenizer: Arc<TextTokenizer>,
    /// The tokenizer as stored with every checkpoint.
    pub(super) tokenizer_json: Arc<String>,
    /// Optimizer steps in the lineage so far.
    pub(super) step: u64,
    /// Counts and offsets of the lineage.
    pub(super) lineage: Lineage,
    /// Replay buffers (restored, or empty).
    pub(super) replay: ReplayBuffers,
    /// Where the consumer starts, per partition.
    pub(super) start_offsets: StartOffsets,
}

/// Restores the newest checkpoint that verifies (corrupt newer ones are skipped with a
/// warning by the store), or starts a new lineage.
pub(super) async fn restore_or_start<B: AutodiffBackend>(
    config: &Config,
    store: &Arc<CheckpointStore>,
    device: B::Device,
) -> anyhow::Result<Start<B>> {
    let restored = {
        let store = Arc::clone(store);
        tokio::task::spawn_blocking(move || store.load_latest_valid())
            .await
            .context("checkpoint loading panicked")?
            .context("reading the checkpoint store")?
    };
    let restored = match restored {
        Some((meta, mut blobs)) => Some(Restored::from_blobs(meta, |name| blobs.take(name))?),
        None => None,
    };
    let tokenizer = match &restored {
        Some(r) => TextTokenizer::from_json(&r.tokenizer_json, config.text.max_length)
            .context("loading the checkpoint's tokenizer")?,
        None => match crate::warm_start::tokenizer(config)? {
            Some(t) => t,
            None => new_tokenizer(config).await?,
        },
    };
    let tokenizer = Arc::new(tokenizer);
    if config.cmcl.image_refresh_steps.is_some() {
        tracing::warn!(
            "cmcl.image_refresh_steps is no longer used and is ignored: the image window's embeddings come from the training steps (docs/configuration.md)"
        );
    }
    let trainer = model::<B>(config, restored.as_ref(), &tokenizer, device)?;
    let (step, counts, progress_offsets, replay) = match &restored {
        Some(r) => (
            r.meta.step,
            r.counts(),
            r.progress(),
            ReplayBuffers::decode(&r.replay, config.train.replay_capacity, config.train.seed ^ r.meta.step)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "replay buffer not restored; starting empty");
                    ReplayBuffers::new(config.train.replay_capacity, config.train.seed)
                }),
        ),
        None => (0, RecordCounts::default(), Vec::new(), ReplayBuffers::new(config.train.replay_capacity, config.train.seed)),
    };
    let start_offsets = PartitionOffsets::start_offsets(&progress_offsets);
    let lineage = Lineage::restore(counts, &progress_offsets);
    let tokenizer_json = Arc::new(tokenizer.to_json().context("serialising the tokenizer")?);
    Ok(Start {
        restored_from: restored.as_ref().map(|r| r.meta.id),
        restored_offsets: restored.as_ref().map_or_else(String::new, |r| {
            r.meta.offsets.iter().map(|p| format!("{}@{}", p.tp, p.next_offset)).collect::<Vec<_>>().join(", ")
        }),
        trainer,
        tokenizer,
        tokenizer_json,
        step,
        lineage,
        replay,
        start_offsets,
    })
}

/// The model of the checkpoint (whose architecture must be `model.arch`), of `init_from`,
/// or a new one from `[model]`.
fn model<B: AutodiffBackend>(
    config: &Config,
    restored: Option<&Restored>,
    tokenizer: &TextTokenizer,
    device: B::Device,
) -> anyhow::Result<Trainer<B>> {
    let settings = train_settings(config);
    Ok(match restored {
        Some(r) => {
            let t = Trainer::load(&r.trainer, settings, device).map_err(|e| anyhow::anyhow!("loading checkpoint {}: {e}", r.meta.id))?;
            let arch = t.config().arch.as_str();
            let want = config.model.arch.as_str();
            if arch != want {
                return Err(StartupError(format!(
                    "model.arch = {want:?} but the store's checkpoint {} holds a {arch:?} model (use another storage.path)",
                    r.meta.id
                ))
                .into());
            }
            tracing::info!(
                checkpoint = r.meta.id,
                step = r.meta.step,
                text = r.meta.records.text,
                image = r.meta.records.image,
                pair = r.meta.records.pair,
                rejected = r.meta.records.rejected,
                "resuming from checkpoint"
            );
            t
        }
        None if config.model.init_from.is_some() => {
            let fresh = || new_model_config(config, tokenizer);
            crate::warm_start::trainer::<B>(config, tokenizer, fresh, settings, device)?.expect("init_from is set")
        }
        None => {
            let mc = new_model_config(config, tokenizer)?;
            tracing::info!(arch = mc.arch.as_str(), size = %mc.size, vocab = mc.vocab_size, feature_dim = mc.feature_dim, "starting a new lineage");
            Trainer::new(mc, settings, device).map_err(|e| StartupError(format!("model: {e}")))?
        }
    })
}

/// The trainer settings of `[train]` (buckets, decay, clipping, seed, shape policy).
pub(crate) fn train_settings(config: &Config) -> TrainSettings {
    let t = &config.train;
    TrainSettings {
        text_buckets: t.text_buckets.clone(),
        object_buckets: t.object_buckets.clone(),
        weight_decay: t.weight_decay,
        max_grad_norm: t.max_grad_norm,
        seed: t.seed,
        // The JIT backends compile per shape: pad row and target counts to a few sizes.
        shape_policy: match parse_device(&t.device) {
            Ok(DeviceChoice::Cpu) | Err(_) => unimod_model::ShapePolicy::Tight,
            Ok(_) => unimod_model::ShapePolicy::Static,
        },
        // UNIMO's image window (the trainer turns it off for a model without CMCL).
        image_memory: crate::train::cmcl::image_memory(&config.cmcl),
        ..TrainSettings::default()
    }
}

/// Builds the model config for a new lineage from `[model]`, the tokenizer and the image
/// feature width.
fn new_model_config(config: &Config, tokenizer: &TextTokenizer) -> anyhow::Result<unimod_model::ModelConfig> {
    let m = &config.model;
    let sp = tokenizer.special();
    let special = unimod_model::SpecialTokens { pad: sp.pad, cls: sp.cls, sep: sp.sep, mask: sp.mask, img: sp.img };
    let arch = m.arch;
    let feature_dim = m.feature_dim.unwrap_or_else(|| config.image.feature_dim());
    let vocab = tokenizer.vocab_size();
    let mut mc = if m.size == "custom" {
        unimod_model::ModelConfig::custom(
            arch,
            m.layers.unwrap_or(0),
            m.hidden.unwrap_or(0),
            m.heads.unwrap_or(0),
            vocab,
            feature_dim,
            special,
        )
    } else {
        unimod_model::ModelConfig::preset(arch, &m.size, vocab, feature_dim, special)
    }
    .map_err(|e| StartupError(format!("model: {e}")))?;
    mc.dropout = m.dropout;
    mc.pre_ln = m.pre_ln;
    mc.max_text_len = tokenizer.max_length().max(*config.train.text_buckets.last().unwrap_or(&2));
    mc.max_objects = *config.train.object_buckets.last().unwrap_or(&1);
    mc.weights = m.weights.resolve(mc.arch);
    mc.continuation = m.continuation;
    mc.validate().map_err(|e| StartupError(format!("model: {e}")))?;
    Ok(mc)
}

/// The tokenizer of a new lineage: `text.tokenizer_path`, or a BPE trained on a bootstrap
/// sample of the stream's texts and captions (stored with every checkpoint afterwards).
async fn new_tokenizer(config: &Config) -> anyhow::Result<TextTokenizer> {
    if config.text.tokenizer_path.is_some() {
        return TextTokenizer::from_config::<String>(&config.text, &[])
            .map_err(|e| StartupError(format!("text.tokenizer_path: {e}")).into());
    }
    let n = config.text.bootstrap_records;
    tracing::info!(records = n, "no checkpoint and no tokenizer: training one on a sample of the stream");
    let payloads = bootstrap_texts(&config.kafka, n, BOOTSTRAP_TIMEOUT)
        .await
        .context("reading the tokenizer bootstrap sample")?;
    let texts: Vec<String> = payloads
        .iter()
        .filter_map(|p| {
            bootstrap_text(RecordKind::Text, Some(p)).or_else(|| bootstrap_text(RecordKind::Pair, Some(p)))
        })
        .collect();
    tracing::info!(texts = texts.len(), "training the tokenizer");
    let tokenizer = tokio::task::spawn_blocking({
        let cfg = config.text.clone();
        move || TextTokenizer::from_config(&cfg, &texts)
    })
    .await
    .context("tokenizer training panicked")?
    .context("training the tokenizer")?;
    Ok(tokenizer)
}
