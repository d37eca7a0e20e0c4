//! `unimod checkpoint list|show|export`: read-only views of the store (see [`crate::access`]
//! for how they work while `run` holds it).

use std::path::Path;

use anyhow::Context as _;

use unimod_model::{ModelConfig, TrainerState};

use crate::access::CheckpointAccess;
use crate::checkpoint::{blob, Restored};
use crate::train::cooldown::{cool_down, CooldownReport};
use crate::train::replay::ReplayBuffers;
use crate::train::schedule::Schedule;
use unimod_model::{CpuBackend, Trainer};
use crate::cli::CliError;
use crate::config::Config;

/// `checkpoint list`.
pub fn list(config: &Config, json: bool) -> Result<(), CliError> {
    let access = CheckpointAccess::open(config).map_err(CliError::runtime)?;
    let all = access.list().map_err(CliError::runtime)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all).map_err(CliError::runtime)?);
        return Ok(());
    }
    println!("{:>6}  {:>9}  {:<24}  {:>12}  {:>9}  {:>9}  {:>9}  {:>8}", "ID", "STEP", "CREATED", "BYTES", "TEXT", "IMAGE", "PAIR", "REJECTED");
    for m in all {
        println!(
            "{:>6}  {:>9}  {:<24}  {:>12}  {:>9}  {:>9}  {:>9}  {:>8}",
            m.id, m.step, m.created_at, m.bytes, m.records.text, m.records.image, m.records.pair, m.records.rejected
        );
    }
    Ok(())
}

/// `checkpoint show`.
pub fn show(config: &Config, id: &str) -> Result<(), CliError> {
    let access = CheckpointAccess::open(config).map_err(CliError::runtime)?;
    let meta = access.meta(id).map_err(CliError::runtime)?;
    println!("{}", serde_json::to_string_pretty(&meta).map_err(CliError::runtime)?);
    Ok(())
}

/// `--format` of `checkpoint export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// `model.safetensors` (Hugging Face style names), `config.json`, `tokenizer.json`,
    /// `checkpoint.json`: for PyTorch and for `model.init_from`.
    Safetensors,
    /// burn's own record: `model.bin`, `model_config.json`, `tokenizer.json`, `checkpoint.json`.
    Burn,
}

/// `checkpoint export`: see [`ExportFormat`] for the files. With `cooldown`, the weights are
/// those after a cooldown on a copy ([`crate::train::cooldown`]), and `checkpoint.json` says
/// so under `cooldown`.
pub fn export(config: &Config, id: &str, out: &Path, format: ExportFormat, cooldown: bool) -> Result<(), CliError> {
    let access = CheckpointAccess::open(config).map_err(CliError::runtime)?;
    let meta = access.meta(id).map_err(CliError::runtime)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating {}", out.display()))
        .map_err(CliError::runtime)?;
    let write = |file: &str, bytes: &[u8]| -> Result<(), CliError> {
        let path = out.join(file);
        std::fs::write(&path, bytes)
            .with_context(|| format!("writing {}", path.display()))
            .map_err(CliError::runtime)
    };
    let cooled = if cooldown { Some(cooled_model(config, &access, &meta).map_err(CliError::runtime)?) } else { None };
    let blob = |name: &str| match &cooled {
        Some((model, _)) if name == blob::MODEL => Ok(model.clone()),
        _ => access.blob(meta.id, name).map_err(CliError::runtime),
    };
    match format {
        ExportFormat::Burn => {
            for (name, file) in [
                (blob::MODEL, "model.bin"),
                (blob::MODEL_CONFIG, "model_config.json"),
                (blob::TOKENIZER, "tokenizer.json"),
            ] {
                write(file, &blob(name)?)?;
            }
        }
        ExportFormat::Safetensors => {
            let config_json = String::from_utf8(blob(blob::MODEL_CONFIG)?)
                .context("model config is not UTF-8")
                .map_err(CliError::runtime)?;
            let state = TrainerState { config_json, model: blob(blob::MODEL)?, optimizer: Vec::new(), steps_applied: 0 };
            let (model_config, model) = unimod_model::export::model_from_state::<burn::backend::NdArray>(&state, &Default::default())
                .map_err(|e| CliError::runtime(anyhow::anyhow!("checkpoint {}: {e}", meta.id)))?;
            let metadata = [
                ("model_type", model_config.arch.as_str().to_string()),
                ("unimod_version", env!("CARGO_PKG_VERSION").to_string()),
                ("checkpoint", meta.id.to_string()),
                ("step", meta.step.to_string()),
            ];
            let bytes = unimod_model::export::to_safetensors(&model, &metadata)
                .map_err(|e| CliError::runtime(anyhow::anyhow!("checkpoint {}: {e}", meta.id)))?;
            write("model.safetensors", &bytes)?;
            let json = export_config_json(config, &model_config);
            write("config.json", &serde_json::to_vec_pretty(&json).map_err(CliError::runtime)?)?;
            write("tokenizer.json", &blob(blob::TOKENIZER)?)?;
        }
    }
    let mut described = serde_json::to_value(&meta).map_err(CliError::runtime)?;
    if let (Some((_, report)), Some(obj)) = (&cooled, described.as_object_mut()) {
        obj.insert("cooldown".into(), serde_json::to_value(report).map_err(CliError::runtime)?);
    }
    write("checkpoint.json", &serde_json::to_vec_pretty(&described).map_err(CliError::runtime)?)?;
    match &cooled {
        Some((_, r)) => println!(
            "exported checkpoint {} (step {}) after a cooldown of {} steps (learning rate {:.3e} -> 0) to {}",
            meta.id, meta.step, r.steps, r.start_learning_rate, out.display()
        ),
        None => println!("exported checkpoint {} (step {}) to {}", meta.id, meta.step, out.display()),
    }
    Ok(())
}

/// The weights of checkpoint `meta` after a cooldown on a copy (CPU), with its report.
fn cooled_model(
    config: &Config,
    access: &CheckpointAccess,
    meta: &crate::checkpoint::CheckpointMeta,
) -> anyhow::Result<(Vec<u8>, CooldownReport)> {
    let t = &config.train;
    anyhow::ensure!(t.cooldown_steps > 0, "train.cooldown_steps must be > 0 for --cooldown");
    let restored = Restored::from_blobs(meta.clone(), |name| {
        access.blob(meta.id, name).map_err(|e| tracing::warn!(blob = name, error = %format!("{e:#}"), "reading blob")).ok()
    })?;
    let replay_bytes = restored.replay.clone();
    anyhow::ensure!(!replay_bytes.is_empty(), "checkpoint {} has no replay buffers to cool down on", meta.id);
    let mut replay = ReplayBuffers::decode(&replay_bytes, t.replay_capacity.max(1), t.seed ^ meta.step)?;
    let settings = crate::run::train_settings(config);
    let mut trainer = Trainer::<CpuBackend>::load(&restored.trainer, settings, Default::default())
        .map_err(|e| anyhow::anyhow!("loading checkpoint {}: {e}", meta.id))?;
    // The lineage's learning rate at this step (without a rewarm: the snapshot is of the
    // settled run).
    let start_lr = Schedule::new(t.learning_rate, t.warmup_steps, 0, None).lr(meta.step);
    let mix = [t.mix.text, t.mix.image, t.mix.pair];
    let report = cool_down(&mut trainer, &mut replay, meta.step, start_lr, t.cooldown_steps, t.batch_size, mix);
    anyhow::ensure!(report.steps > 0, "checkpoint {} has no replay items to cool down on", meta.id);
    let state = trainer.save().map_err(|e| anyhow::anyhow!("saving the cooled weights: {e}"))?;
    Ok((state.model, report))
}

/// `config.json` of a safetensors export: every field of the model configuration, plus
/// `model_type`, `unimod_version`, and what a reader needs to prepare inputs like the daemon:
/// `text.max_length` and (for the built-in region extractor) `image.box_scales`,
/// `image.crop_size` and `image.salient_boxes`.
pub fn export_config_json(config: &Config, model: &ModelConfig) -> serde_json::Value {
    let mut json: serde_json::Value =
        serde_json::from_str(&model.to_json()).unwrap_or_else(|_| serde_json::json!({}));
    let obj = json.as_object_mut().expect("a model config is a JSON object");
    obj.insert("model_type".into(), model.arch.as_str().into());
    obj.insert("unimod_version".into(), env!("CARGO_PKG_VERSION").into());
    obj.insert("text".into(), serde_json::json!({ "max_length": config.text.max_length }));
    if config.image.feature_dim() == model.feature_dim {
        obj.insert(
            "image".into(),
            serde_json::json!({
                "box_scales": config.image.box_scales,
                "crop_size": config.image.crop_size,
                "salient_boxes": config.image.salient_boxes,
            }),
        );
    } else {
        eprintln!(
            "unimod: note: the model's feature_dim {} is not this config's built-in crop width {} (detector regions?): config.json has no \"image\" section",
            model.feature_dim,
            config.image.feature_dim()
        );
    }
    json
}

/// Keys of `config.json` that are not fields of the model configuration.
pub const EXPORT_EXTRA_KEYS: &[&str] = &["model_type", "unimod_version", "text", "image"];
