//! `unimod eval`: image-to-text and text-to-image retrieval recall@1/5/10 of a checkpoint
//! over a pairs file. Every pair goes through the same preprocessing as the stream (so URLs,
//! base64 images and detector regions all work). UNIMO embeds both sides into its CMCL space
//! and ranks by cosine similarity; ViLBERT scores every image-caption combination with its
//! alignment-prediction head (as in its paper). Ranks are over the whole file.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use unimod_ingest::preprocess::{Outcome, Preprocessor};
use unimod_ingest::record::{RawRecord, RecordKind, SourcePos};
use unimod_ingest::reject::Rejection;
use unimod_ingest::fetch::ImageFetcher;
use unimod_ingest::text::TextTokenizer;
use unimod_model::{Arch, Trainer, VisualInput};

use crate::access::CheckpointAccess;
use crate::cli::CliError;
use crate::config::Config;
use crate::train::examples::visual_input;

type EvalBackend = burn::backend::Autodiff<burn::backend::NdArray>;

/// Recall at 1, 5 and 10.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Recall {
    /// Recall@1.
    pub r1: f64,
    /// Recall@5.
    pub r5: f64,
    /// Recall@10.
    pub r10: f64,
}

/// The `eval --json` object of docs/interface.md.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Checkpoint id.
    pub checkpoint: u64,
    /// Its step.
    pub step: u64,
    /// Pairs evaluated.
    pub pairs: usize,
    /// Image-to-text recall.
    pub i2t: Recall,
    /// Text-to-image recall.
    pub t2i: Recall,
}

/// Recall@1/5/10 for queries (rows of `sim`) whose correct answer is the same index.
/// `sim[q][c]` is the similarity of query `q` and candidate `c`.
pub fn recall(sim: &[Vec<f32>]) -> Recall {
    let n = sim.len();
    if n == 0 {
        return Recall { r1: 0.0, r5: 0.0, r10: 0.0 };
    }
    let mut hits = [0usize; 3];
    for (q, row) in sim.iter().enumerate() {
        let own = row[q];
        // Rank = candidates scoring strictly higher, plus ties placed before (pessimistic).
        let rank = row.iter().enumerate().filter(|&(c, &s)| c != q && s >= own).count();
        for (h, k) in hits.iter_mut().zip([1, 5, 10]) {
            if rank < k {
                *h += 1;
            }
        }
    }
    Recall { r1: hits[0] as f64 / n as f64, r5: hits[1] as f64 / n as f64, r10: hits[2] as f64 / n as f64 }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Image-to-text and text-to-image recall of paired embeddings (index i of both is a pair).
pub fn retrieval(images: &[Vec<f32>], texts: &[Vec<f32>]) -> (Recall, Recall) {
    let i2t: Vec<Vec<f32>> = images.iter().map(|i| texts.iter().map(|t| dot(i, t)).collect()).collect();
    let t2i: Vec<Vec<f32>> = texts.iter().map(|t| images.iter().map(|i| dot(t, i)).collect()).collect();
    (recall(&i2t), recall(&t2i))
}

/// Runs `unimod eval`.
pub async fn eval_command(config: &Config, pairs: &Path, checkpoint: Option<&str>, json: bool) -> Result<(), CliError> {
    let report = evaluate(config, pairs, checkpoint).await.map_err(CliError::runtime)?;
    if json {
        println!("{}", serde_json::to_string(&report).map_err(CliError::runtime)?);
    } else {
        println!(
            "checkpoint {} (step {}), {} pairs\n  image->text  R@1 {:.3}  R@5 {:.3}  R@10 {:.3}\n  text->image  R@1 {:.3}  R@5 {:.3}  R@10 {:.3}",
            report.checkpoint, report.step, report.pairs,
            report.i2t.r1, report.i2t.r5, report.i2t.r10, report.t2i.r1, report.t2i.r5, report.t2i.r10
        );
    }
    Ok(())
}

/// One usable line of a pairs file (`eval --pairs`, `embed --pairs`, `caption --pairs`).
pub struct PairLine {
    /// Line number in the file, from 1.
    pub line: usize,
    /// The producer's `id` field, if present.
    pub id: Option<String>,
    /// The image, as model input.
    pub image: VisualInput,
    /// The caption's token ids.
    pub ids: Vec<u32>,
    /// The (normalised) caption text.
    pub text: String,
}

/// Preprocesses every non-empty line of a pairs file (`lines`, read from `source`) as a pair
/// record, exactly as the daemon preprocesses the pair stream. A rejected line is handed to
/// `on_reject` with its line number (from 1); it and a line lacking an image or a text are
/// skipped. Returns the usable pairs in file order and the number skipped.
pub async fn load_pairs(
    preprocessor: &Preprocessor,
    source: &Path,
    lines: &str,
    mut on_reject: impl FnMut(usize, &Rejection),
) -> (Vec<PairLine>, usize) {
    let topic: Arc<str> = Arc::from(source.display().to_string());
    let mut pairs = Vec::new();
    let mut skipped = 0usize;
    for (n, line) in lines.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let raw = RawRecord {
            kind: RecordKind::Pair,
            pos: SourcePos::new(Arc::clone(&topic), 0, n as i64),
            key: None,
            payload: Some(line.as_bytes().to_vec()),
            received_at: Instant::now(),
        };
        match preprocessor.process(raw).await.outcome {
            Outcome::Ready(s) => match (s.image, s.text) {
                (Some(i), Some(t)) => {
                    pairs.push(PairLine { line: n + 1, id: s.id, image: visual_input(&i), ids: t.ids, text: t.text })
                }
                _ => skipped += 1,
            },
            Outcome::Rejected(r) => {
                on_reject(n + 1, &r);
                skipped += 1;
            }
        }
    }
    (pairs, skipped)
}

/// Loads the checkpoint and computes the report.
pub async fn evaluate(config: &Config, pairs: &Path, checkpoint: Option<&str>) -> anyhow::Result<EvalReport> {
    let lines = tokio::fs::read_to_string(pairs)
        .await
        .with_context(|| format!("reading --pairs {}", pairs.display()))?;
    let (restored, access) = {
        let config = config.clone();
        let id = checkpoint.unwrap_or("latest").to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let access = CheckpointAccess::open(&config)?;
            let restored = access.restore_for_inference(&id)?;
            Ok((restored, access))
        })
        .await
        .context("loading the checkpoint")??
    };
    drop(access);
    let tokenizer = Arc::new(
        TextTokenizer::from_json(&restored.tokenizer_json, config.text.max_length)
            .context("loading the checkpoint's tokenizer")?,
    );
    let fetcher = ImageFetcher::new(&config.fetch, None).context("building the image fetcher")?;
    let preprocessor =
        Preprocessor::new(&config.preprocess, &config.image, Arc::clone(&tokenizer), fetcher, None)
            .context("starting preprocessing")?;
    let started = Instant::now();
    let (loaded, skipped) = load_pairs(&preprocessor, pairs, &lines, |line, r| {
        tracing::warn!(line, reason = %r, "pair skipped");
    })
    .await;
    let (images, texts): (Vec<VisualInput>, Vec<Vec<u32>>) = loaded.into_iter().map(|p| (p.image, p.ids)).unzip();
    if images.is_empty() {
        anyhow::bail!("{}: no usable pairs ({} skipped)", pairs.display(), skipped);
    }
    if skipped > 0 {
        eprintln!("unimod: warning: {skipped} pairs of {} could not be used", pairs.display());
    }
    let state = restored.trainer.clone();
    let n = images.len();
    let (i2t, t2i) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let trainer: Trainer<EvalBackend> = Trainer::load(&state, Default::default(), Default::default())
            .map_err(|e| anyhow::anyhow!("loading the model: {e}"))?;
        if trainer.config().arch == Arch::Vilbert {
            // ViLBERT retrieves with its alignment-prediction head over every combination.
            let scores = trainer.match_scores(&images, &texts, 256);
            let transposed: Vec<Vec<f32>> =
                (0..texts.len()).map(|t| scores.iter().map(|row| row[t]).collect()).collect();
            return Ok((recall(&scores), recall(&transposed)));
        }
        // UNIMO: cosine similarity in the shared contrastive space.
        let mut img_emb = Vec::with_capacity(images.len());
        for chunk in images.chunks(64) {
            img_emb.extend(trainer.embed_images(chunk));
        }
        let mut txt_emb = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(64) {
            txt_emb.extend(trainer.embed_texts(chunk));
        }
        Ok(retrieval(&img_emb, &txt_emb))
    })
    .await
    .context("evaluation panicked")??;
    tracing::info!(pairs = n, ms = started.elapsed().as_millis() as u64, "evaluated");
    Ok(EvalReport { checkpoint: restored.meta.id, step: restored.meta.step, pairs: n, i2t, t2i })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_reversed_rankings() {
        let eye: Vec<Vec<f32>> = (0..12).map(|i| (0..12).map(|j| f32::from(u8::from(i == j))).collect()).collect();
        let (i2t, t2i) = retrieval(&eye, &eye);
        assert_eq!(i2t, Recall { r1: 1.0, r5: 1.0, r10: 1.0 });
        assert_eq!(t2i, i2t);
        // Every query's own candidate scores lowest: recall@10 of 12 candidates is 0.
        let sim: Vec<Vec<f32>> = (0..12).map(|i| (0..12).map(|j| if i == j { -1.0 } else { 1.0 }).collect()).collect();
        assert_eq!(recall(&sim), Recall { r1: 0.0, r5: 0.0, r10: 0.0 });
    }

    #[test]
    fn ties_count_against_the_query() {
        let sim = vec![vec![1.0, 1.0], vec![0.0, 1.0]];
        let r = recall(&sim);
        assert_eq!(r.r1, 0.5);
        assert_eq!(r.r5, 1.0);
    }
}
