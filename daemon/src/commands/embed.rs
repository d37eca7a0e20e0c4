//! `unimod embed`: the normalised contrastive-space vectors of every pair's caption and
//! image, one JSON line per pair (`{"id", "text": [f], "image": [f]}`). The pairs go through
//! the same preprocessing as the stream and `eval`; the checkpoint is read the way `eval`
//! reads it (read-only, or through the running daemon's HTTP port).
//!
//! These are the vectors `unimod eval` ranks for UNIMO. ViLBERT's contrastive projection is
//! not trained (its retrieval scores pairs with the matching head), so its vectors are
//! printed for comparison with an exported copy, not for retrieval.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;
use unimod_ingest::fetch::ImageFetcher;
use unimod_ingest::preprocess::Preprocessor;
use unimod_ingest::text::TextTokenizer;
use unimod_model::{Trainer, VisualInput};

use crate::access::CheckpointAccess;
use crate::cli::CliError;
use crate::config::Config;
use crate::commands::eval::load_pairs;

type EmbedBackend = burn::backend::Autodiff<burn::backend::NdArray>;

/// One output line.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddedPair {
    /// The pair's `id` (null when it has none).
    pub id: Option<String>,
    /// Caption vector.
    pub text: Vec<f32>,
    /// Image vector.
    pub image: Vec<f32>,
}

/// Runs `unimod embed`.
pub async fn embed_command(config: &Config, pairs: &Path, checkpoint: Option<&str>) -> Result<(), CliError> {
    let lines = embed_pairs(config, pairs, checkpoint).await.map_err(CliError::runtime)?;
    let mut out = std::io::stdout().lock();
    for line in &lines {
        let json = serde_json::to_string(line).map_err(CliError::runtime)?;
        writeln!(out, "{json}").map_err(CliError::runtime)?;
    }
    out.flush().map_err(CliError::runtime)
}

/// Loads the checkpoint and embeds every usable pair of the file, in file order.
pub async fn embed_pairs(config: &Config, pairs: &Path, checkpoint: Option<&str>) -> anyhow::Result<Vec<EmbeddedPair>> {
    let lines = tokio::fs::read_to_string(pairs)
        .await
        .with_context(|| format!("reading --pairs {}", pairs.display()))?;
    let restored = {
        let config = config.clone();
        let id = checkpoint.unwrap_or("latest").to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            CheckpointAccess::open(&config)?.restore_for_inference(&id)
        })
        .await
        .context("loading the checkpoint")??
    };
    let tokenizer = Arc::new(
        TextTokenizer::from_json(&restored.tokenizer_json, config.text.max_length)
            .context("loading the checkpoint's tokenizer")?,
    );
    let fetcher = ImageFetcher::new(&config.fetch, None).context("building the image fetcher")?;
    let preprocessor = Preprocessor::new(&config.preprocess, &config.image, Arc::clone(&tokenizer), fetcher, None)
        .context("starting preprocessing")?;
    let (loaded, skipped) = load_pairs(&preprocessor, pairs, &lines, |line, r| {
        tracing::warn!(line, reason = %r, "pair skipped");
    })
    .await;
    let mut ids: Vec<Option<String>> = Vec::with_capacity(loaded.len());
    let mut images: Vec<VisualInput> = Vec::with_capacity(loaded.len());
    let mut texts: Vec<Vec<u32>> = Vec::with_capacity(loaded.len());
    for p in loaded {
        ids.push(p.id);
        images.push(p.image);
        texts.push(p.ids);
    }
    if images.is_empty() {
        anyhow::bail!("{}: no usable pairs ({} skipped)", pairs.display(), skipped);
    }
    if skipped > 0 {
        eprintln!("unimod: warning: {skipped} pairs of {} could not be used", pairs.display());
    }
    let state = restored.trainer;
    let (text_vecs, image_vecs) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let trainer: Trainer<EmbedBackend> = Trainer::load(&state, Default::default(), Default::default())
            .map_err(|e| anyhow::anyhow!("loading the model: {e}"))?;
        Ok((trainer.embed_texts(&texts), trainer.embed_images(&images)))
    })
    .await
    .context("embedding panicked")??;
    Ok(ids
        .into_iter()
        .zip(text_vecs.into_iter().zip(image_vecs))
        .map(|(id, (text, image))| EmbeddedPair { id, text, image })
        .collect())
}
