//! `unimod caption` and `unimod generate`: decode with a checkpoint's UNIMO generation head.
//!
//! Checkpoint access is the same as `unimod eval` (read-only; through the running daemon's
//! HTTP endpoint while `run` holds the store). Images go through the stream's preprocessing.
//! With `--pairs`, each line is a pair record (`{"id", "caption", "image_base64"|"image_url"}`);
//! its caption is the reference, and corpus BLEU-4 and CIDEr-D close the output.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;
use unimod_ingest::fetch::ImageFetcher;
use unimod_ingest::preprocess::Preprocessor;
use unimod_ingest::text::TextTokenizer;
use unimod_model::{DecodeOptions, Inference, ModelError, Trainer, VisualInput};

use crate::access::CheckpointAccess;
use crate::cli::CliError;
use crate::config::Config;
use crate::commands::eval::load_pairs;
use crate::metrics_text::{bleu4, cider_d};
use crate::serve::preprocess_image;

type LoadBackend = burn::backend::Autodiff<burn::backend::NdArray>;

/// File name endings read from a folder.
const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// What `caption` reads.
#[derive(Debug, Clone)]
pub enum CaptionInput {
    /// Image files and folders of images.
    Paths(Vec<PathBuf>),
    /// A JSONL file of pairs (references for BLEU-4 / CIDEr-D).
    Pairs(PathBuf),
}

/// Decoding flags shared by both commands.
#[derive(Debug, Clone, Copy)]
pub struct DecodeArgs {
    /// Beam width.
    pub beam: usize,
    /// Most generated tokens.
    pub max_len: usize,
    /// Re-encode at every token instead of using the key/value cache (benchmarks).
    pub no_cache: bool,
}

impl DecodeArgs {
    fn options(&self) -> Result<DecodeOptions, CliError> {
        if !(1..=64).contains(&self.beam) {
            return Err(CliError::usage(format!("--beam must be between 1 and 64 (got {})", self.beam)));
        }
        if self.max_len == 0 {
            return Err(CliError::usage("--max-len must be at least 1"));
        }
        Ok(DecodeOptions { beam: self.beam, max_len: self.max_len, use_cache: !self.no_cache, ..DecodeOptions::default() })
    }
}

/// A loaded checkpoint ready for inference.
struct Loaded {
    model: Inference<burn::backend::NdArray>,
    tokenizer: Arc<TextTokenizer>,
    checkpoint: u64,
    step: u64,
}

fn model_error(e: ModelError) -> CliError {
    match e {
        ModelError::Unsupported(m) => CliError::usage(m),
        other => CliError::runtime(anyhow::anyhow!("{other}")),
    }
}

/// Loads a checkpoint read-only (as `unimod eval` does).
async fn load(config: &Config, checkpoint: Option<&str>) -> anyhow::Result<Loaded> {
    let config = config.clone();
    let id = checkpoint.unwrap_or("latest").to_owned();
    let max_length = config.text.max_length;
    tokio::task::spawn_blocking(move || -> anyhow::Result<Loaded> {
        let access = CheckpointAccess::open(&config)?;
        let restored = access.restore_for_inference(&id)?;
        drop(access);
        let tokenizer = Arc::new(
            TextTokenizer::from_json(&restored.tokenizer_json, max_length).context("loading the checkpoint's tokenizer")?,
        );
        let trainer: Trainer<LoadBackend> = Trainer::load(&restored.trainer, Default::default(), Default::default())
            .map_err(|e| anyhow::anyhow!("loading the model: {e}"))?;
        Ok(Loaded {
            model: trainer.inference(restored.meta.step),
            tokenizer,
            checkpoint: restored.meta.id,
            step: restored.meta.step,
        })
    })
    .await
    .context("loading the checkpoint")?
}

fn preprocessor(config: &Config, tokenizer: &Arc<TextTokenizer>) -> anyhow::Result<Preprocessor> {
    let fetcher = ImageFetcher::new(&config.fetch, None).context("building the image fetcher")?;
    Preprocessor::new(&config.preprocess, &config.image, Arc::clone(tokenizer), fetcher, None).context("starting preprocessing")
}

/// One image to caption.
struct Item {
    id: String,
    image: VisualInput,
    reference: Option<String>,
}

fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CliError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| CliError::usage(format!("reading {}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && f.extension()
                            .and_then(|x| x.to_str())
                            .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
                })
                .collect();
            files.sort();
            out.extend(files);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(CliError::usage(format!("{}: no such file or folder", p.display())));
        }
    }
    if out.is_empty() {
        return Err(CliError::usage("no images to caption"));
    }
    Ok(out)
}

async fn read_items(input: &CaptionInput, pre: &Preprocessor) -> Result<Vec<Item>, CliError> {
    let mut items = Vec::new();
    let mut skipped = 0usize;
    match input {
        CaptionInput::Paths(paths) => {
            for path in expand(paths)? {
                let bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|e| CliError::usage(format!("reading {}: {e}", path.display())))?;
                let id = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
                match preprocess_image(pre, bytes, &path.display().to_string()).await {
                    Ok(image) => items.push(Item { id, image, reference: None }),
                    Err(e) => {
                        eprintln!("unimod: warning: {}: {e}", path.display());
                        skipped += 1;
                    }
                }
            }
        }
        CaptionInput::Pairs(file) => {
            let lines = tokio::fs::read_to_string(file)
                .await
                .map_err(|e| CliError::usage(format!("reading --pairs {}: {e}", file.display())))?;
            let (pairs, unusable) = load_pairs(pre, file, &lines, |line, r| {
                eprintln!("unimod: warning: {} line {line}: {r}", file.display());
            })
            .await;
            skipped += unusable;
            items.extend(pairs.into_iter().map(|p| Item {
                id: p.id.unwrap_or_else(|| format!("line {}", p.line)),
                image: p.image,
                reference: Some(p.text),
            }));
        }
    }
    if items.is_empty() {
        return Err(CliError::runtime(anyhow::anyhow!("no usable images ({skipped} skipped)")));
    }
    if skipped > 0 {
        eprintln!("unimod: warning: {skipped} inputs could not be used");
    }
    Ok(items)
}

/// One `caption --json` line per image.
#[derive(Serialize)]
struct CaptionLine<'a> {
    id: &'a str,
    caption: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

/// The last `caption --json --pairs` line.
#[derive(Serialize)]
struct ScoreLine {
    images: usize,
    bleu4: f64,
    cider: f64,
}

/// The `generate --json` object.
#[derive(Serialize)]
struct GenerateLine<'a> {
    prompt: &'a str,
    text: &'a str,
    checkpoint: u64,
    step: u64,
}

/// Runs `unimod caption`.
pub async fn caption_command(
    config: &Config,
    input: CaptionInput,
    checkpoint: Option<&str>,
    args: DecodeArgs,
    json_out: bool,
) -> Result<(), CliError> {
    let opts = args.options()?;
    let loaded = load(config, checkpoint).await.map_err(CliError::runtime)?;
    if loaded.model.config().arch != unimod_model::Arch::Unimo {
        return Err(CliError::usage(unimod_model::generate::NO_GENERATION_HEAD));
    }
    let pre = preprocessor(config, &loaded.tokenizer).map_err(CliError::runtime)?;
    let items = read_items(&input, &pre).await?;
    if !json_out {
        println!("checkpoint {} (step {}), {} images", loaded.checkpoint, loaded.step, items.len());
    }
    let model = Arc::new(loaded.model);
    let mut candidates = Vec::with_capacity(items.len());
    let mut references = Vec::with_capacity(items.len());
    for item in items {
        let (model, image, o) = (Arc::clone(&model), item.image, opts.clone());
        let out = tokio::task::spawn_blocking(move || model.caption(&image, &o))
            .await
            .map_err(CliError::runtime)?
            .map_err(model_error)?;
        let text = loaded.tokenizer.decode(&out.ids).map_err(CliError::runtime)?.trim().to_string();
        if json_out {
            let line = CaptionLine { id: &item.id, caption: &text, reference: item.reference.as_deref() };
            println!("{}", serde_json::to_string(&line).map_err(CliError::runtime)?);
        } else {
            match &item.reference {
                Some(r) => println!("{}\t{}\n\treference: {}", item.id, text, r),
                None => println!("{}\t{}", item.id, text),
            }
        }
        if let Some(r) = item.reference {
            candidates.push(text);
            references.push(vec![r]);
        }
    }
    if matches!(input, CaptionInput::Pairs(_)) {
        let (b, c) = (bleu4(&candidates, &references), cider_d(&candidates, &references));
        if json_out {
            let line = ScoreLine { images: candidates.len(), bleu4: b, cider: c };
            println!("{}", serde_json::to_string(&line).map_err(CliError::runtime)?);
        } else {
            println!("{} images: BLEU-4 {:.4}  CIDEr-D {:.4}", candidates.len(), b, c);
        }
    }
    Ok(())
}

/// Runs `unimod generate`.
pub async fn generate_command(
    config: &Config,
    prompt: &str,
    checkpoint: Option<&str>,
    args: DecodeArgs,
    json_out: bool,
) -> Result<(), CliError> {
    let opts = args.options()?;
    if prompt.trim().is_empty() {
        return Err(CliError::usage("--prompt is empty"));
    }
    let loaded = load(config, checkpoint).await.map_err(CliError::runtime)?;
    let ids = loaded.tokenizer.encode(prompt).map_err(CliError::runtime)?.ids;
    let model = loaded.model;
    let out = tokio::task::spawn_blocking(move || model.continue_text(&ids, &opts))
        .await
        .map_err(CliError::runtime)?
        .map_err(model_error)?;
    let text = loaded.tokenizer.decode(&out.ids).map_err(CliError::runtime)?.trim().to_string();
    if json_out {
        let line = GenerateLine { prompt, text: &text, checkpoint: loaded.checkpoint, step: loaded.step };
        println!("{}", serde_json::to_string(&line).map_err(CliError::runtime)?);
    } else {
        println!("{text}");
    }
    Ok(())
}

/// Convenience for `cli.rs`: the input of `caption` from its arguments.
pub fn caption_input(paths: Vec<PathBuf>, pairs: Option<PathBuf>) -> Result<CaptionInput, CliError> {
    match (paths.is_empty(), pairs) {
        (true, Some(p)) => Ok(CaptionInput::Pairs(p)),
        (false, None) => Ok(CaptionInput::Paths(paths)),
        (false, Some(_)) => Err(CliError::usage("give images (files or folders) or --pairs FILE, not both")),
        (true, None) => Err(CliError::usage("give images (files or folders) or --pairs FILE")),
    }
}

