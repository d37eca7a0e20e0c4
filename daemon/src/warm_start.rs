//! `[model] init_from`: a new lineage that starts from exported weights instead of random
//! ones (only when the store has no checkpoint; a store with one resumes from it).
//!
//! - Without `init_map`: the directory is a `checkpoint export` (safetensors format). The
//!   architecture, every dimension and the tokenizer come from its `config.json` and
//!   `tokenizer.json`; `[model] arch` must agree, `dropout` and `weights` still apply. Every
//!   tensor must be present with its shape (a mismatch names the tensor).
//! - With `init_map` (source prefix -> unimod prefix): only the file's tensors under a listed
//!   prefix are loaded into the model that `[model]` describes (for example a RoBERTa text
//!   encoder into the UNIMO encoder); the tokenizer is the directory's `tokenizer.json` when
//!   there is one (else `text.tokenizer_path` or the bootstrap). What was loaded and what was
//!   left at its initialisation is logged.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use burn::tensor::backend::AutodiffBackend;
use unimod_ingest::text::TextTokenizer;
use unimod_model::export::{load_safetensors, model_from_state, with_weights};
use unimod_model::{ModelConfig, TrainSettings, Trainer};

use crate::config::Config;
use crate::commands::checkpoint::EXPORT_EXTRA_KEYS;
use crate::run::StartupError;

fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn startup(msg: String) -> anyhow::Error {
    StartupError(msg).into()
}

/// The tokenizer of a warm start: `init_from/tokenizer.json` (required without `init_map`,
/// used when present with it). `None` when there is no `init_from` or it has no tokenizer
/// and `init_map` is set.
pub fn tokenizer(config: &Config) -> anyhow::Result<Option<TextTokenizer>> {
    let Some(dir) = &config.model.init_from else { return Ok(None) };
    let path = file(dir, "tokenizer.json");
    if !config.model.init_map.is_empty() && !path.exists() {
        return Ok(None);
    }
    TextTokenizer::from_file(&path, config.text.max_length)
        .map(Some)
        .map_err(|e| startup(format!("model.init_from: {e}")))
}

/// The model configuration of a full export, with this config's training choices.
fn export_model_config(config: &Config, dir: &Path, tokenizer: &TextTokenizer) -> anyhow::Result<ModelConfig> {
    let path = file(dir, "config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| startup(format!("model.init_from: cannot read {}: {e}", path.display())))?;
    let mut value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| startup(format!("model.init_from: {} is not JSON: {e}", path.display())))?;
    if let Some(obj) = value.as_object_mut() {
        for k in EXPORT_EXTRA_KEYS {
            obj.remove(*k);
        }
    }
    let mut mc = ModelConfig::from_json(&value.to_string())
        .map_err(|e| startup(format!("model.init_from: {}: {e}", path.display())))?;
    let want = config.model.arch.as_str();
    if mc.arch.as_str() != want {
        return Err(startup(format!(
            "model.arch = {want:?} but model.init_from {} holds a {:?} model",
            dir.display(),
            mc.arch.as_str()
        )));
    }
    let feature_dim = config.model.feature_dim.unwrap_or_else(|| config.image.feature_dim());
    if mc.feature_dim != feature_dim {
        return Err(startup(format!(
            "model.init_from: the export's visual feature width is {} but this config gives {feature_dim} (image.crop_size / model.feature_dim)",
            mc.feature_dim
        )));
    }
    if tokenizer.vocab_size() != mc.vocab_size {
        return Err(startup(format!(
            "model.init_from: tokenizer.json has {} entries but config.json says vocab_size = {}",
            tokenizer.vocab_size(),
            mc.vocab_size
        )));
    }
    let m = &config.model;
    mc.dropout = m.dropout;
    mc.max_objects = *config.train.object_buckets.last().unwrap_or(&mc.max_objects);
    // The caption weight stays the exported model's (as before the weights had one type).
    mc.weights = unimod_model::ObjectiveWeights { caption: mc.weights.caption, ..m.weights.resolve(mc.arch) };
    mc.validate().map_err(|e| startup(format!("model.init_from: {e}")))?;
    Ok(mc)
}

/// A trainer for a new lineage from `init_from`, or `None` when it is not set. `fresh`
/// builds the model configuration from `[model]` (used with `init_map`).
pub fn trainer<B: AutodiffBackend>(
    config: &Config,
    tokenizer: &TextTokenizer,
    fresh: impl FnOnce() -> anyhow::Result<ModelConfig>,
    settings: TrainSettings,
    device: B::Device,
) -> anyhow::Result<Option<Trainer<B>>> {
    let Some(dir) = &config.model.init_from else { return Ok(None) };
    let map = &config.model.init_map;
    let mc = if map.is_empty() { export_model_config(config, dir, tokenizer)? } else { fresh()? };
    let path = file(dir, "model.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| startup(format!("model.init_from: cannot read {}: {e}", path.display())))?;
    let initial = Trainer::<B>::new(mc.clone(), settings.clone(), device.clone())
        .map_err(|e| startup(format!("model: {e}")))?
        .save()
        .context("initialising the model")?;
    let (_, model) = model_from_state::<B>(&initial, &device).context("initialising the model")?;
    let (model, report) = load_safetensors(model, bytes, map)
        .map_err(|e| startup(format!("model.init_from: {}: {e}", path.display())))?;
    let state = with_weights(initial, &model).context("initialising the model")?;
    let trainer = Trainer::load(&state, settings, device).context("initialising the model")?;
    if map.is_empty() {
        tracing::info!(
            dir = %dir.display(),
            arch = mc.arch.as_str(),
            tensors = report.loaded.len(),
            "starting a new lineage from exported weights"
        );
    } else {
        tracing::info!(
            dir = %dir.display(),
            arch = mc.arch.as_str(),
            loaded = report.loaded.len(),
            left_at_initialisation = report.left.len(),
            not_selected = report.ignored,
            "starting a new lineage partly initialised from {}", path.display()
        );
        tracing::info!(tensors = ?report.loaded, "init_map: loaded");
        tracing::info!(tensors = ?report.left, "init_map: left at their initialisation");
        if !report.unused.is_empty() {
            tracing::warn!(tensors = ?report.unused, "init_map: mapped tensors with no place in the model (ignored)");
        }
    }
    Ok(Some(trainer))
}
