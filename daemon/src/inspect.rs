//! `unimod checkpoint list|show|export`: read-only views of the store (see [`crate::access`]
//! for how they work while `run` holds it).

use std::path::Path;

use anyhow::Context as _;

use crate::access::CheckpointAccess;
use crate::checkpoint_io::{blob, Restored};
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

/// `checkpoint export`: `model.bin` (burn record bytes), `model_config.json`,
/// `tokenizer.json` and `checkpoint.json` (the metadata). With `cooldown`, `model.bin` holds
/// the weights after a cooldown on a copy ([`crate::train::cooldown`]), and `checkpoint.json`
/// says so under `cooldown`.
pub fn export(config: &Config, id: &str, out: &Path, cooldown: bool) -> Result<(), CliError> {
    let access = CheckpointAccess::open(config).map_err(CliError::runtime)?;
    let meta = access.meta(id).map_err(CliError::runtime)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating {}", out.display()))
        .map_err(CliError::runtime)?;
    let cooled = if cooldown { Some(cooled_model(config, &access, &meta).map_err(CliError::runtime)?) } else { None };
    let files = [
        (blob::MODEL, "model.bin"),
        (blob::MODEL_CONFIG, "model_config.json"),
        (blob::TOKENIZER, "tokenizer.json"),
    ];
    for (name, file) in files {
        let bytes = match &cooled {
            Some((model, _)) if name == blob::MODEL => model.clone(),
            _ => access.blob(meta.id, name).map_err(CliError::runtime)?,
        };
        let path = out.join(file);
        std::fs::write(&path, bytes)
            .with_context(|| format!("writing {}", path.display()))
            .map_err(CliError::runtime)?;
    }
    let mut described = serde_json::to_value(&meta).map_err(CliError::runtime)?;
    if let (Some((_, report)), Some(obj)) = (&cooled, described.as_object_mut()) {
        obj.insert("cooldown".into(), serde_json::to_value(report).map_err(CliError::runtime)?);
    }
    let path = out.join("checkpoint.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&described).map_err(CliError::runtime)?)
        .with_context(|| format!("writing {}", path.display()))
        .map_err(CliError::runtime)?;
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
