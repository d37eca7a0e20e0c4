//! `unimod checkpoint list|show|export`: read-only views of the store (see [`crate::access`]
//! for how they work while `run` holds it).

use std::path::Path;

use anyhow::Context as _;

use crate::access::CheckpointAccess;
use crate::checkpoint_io::blob;
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
/// `tokenizer.json` and `checkpoint.json` (the metadata).
pub fn export(config: &Config, id: &str, out: &Path) -> Result<(), CliError> {
    let access = CheckpointAccess::open(config).map_err(CliError::runtime)?;
    let meta = access.meta(id).map_err(CliError::runtime)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating {}", out.display()))
        .map_err(CliError::runtime)?;
    let files = [
        (blob::MODEL, "model.bin"),
        (blob::MODEL_CONFIG, "model_config.json"),
        (blob::TOKENIZER, "tokenizer.json"),
    ];
    for (name, file) in files {
        let bytes = access.blob(meta.id, name).map_err(CliError::runtime)?;
        let path = out.join(file);
        std::fs::write(&path, bytes)
            .with_context(|| format!("writing {}", path.display()))
            .map_err(CliError::runtime)?;
    }
    let path = out.join("checkpoint.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&meta).map_err(CliError::runtime)?)
        .with_context(|| format!("writing {}", path.display()))
        .map_err(CliError::runtime)?;
    println!("exported checkpoint {} (step {}) to {}", meta.id, meta.step, out.display());
    Ok(())
}
