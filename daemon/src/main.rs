//! `unimod`: continual multimodal pretraining from Kafka. A thin CLI over the `unimod`
//! library; see `docs/architecture.md` for the data path and docs/interface.md for the contract.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration. Every failure
//! prints one line on stderr naming what was wrong.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use unimod::cli;

#[derive(Debug, Parser)]
#[command(name = "unimod", version, about = "Continual UNIMO/ViLBERT pretraining from a Kafka stream")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume, preprocess, train and checkpoint until SIGTERM/SIGINT (or a bound).
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Stop (with a final checkpoint) after this many optimizer steps.
        #[arg(long)]
        max_steps: Option<u64>,
        /// Stop (with a final checkpoint) after this many seconds.
        #[arg(long)]
        max_seconds: Option<u64>,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Publish JSONL files (or image files/folders for --kind image) to Kafka.
    Produce {
        /// Bootstrap brokers, `host:port[,host:port...]`.
        #[arg(long)]
        brokers: String,
        /// Message kind: text, image or pair.
        #[arg(long)]
        kind: cli::KindArg,
        /// Topic (default: unimo.text, unimo.image or unimo.pair).
        #[arg(long)]
        topic: Option<String>,
        /// JSONL files, or image files and folders for --kind image.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Retrieval recall@1/5/10 of a checkpoint over a pairs file.
    Eval {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// JSONL file of pairs (`{"id", "caption", "image_base64"|"image_url"}`).
        #[arg(long)]
        pairs: PathBuf,
        /// Checkpoint id (default: the latest valid one).
        #[arg(long)]
        checkpoint: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The normalised contrastive-space vectors of every pair's caption and image, one JSON
    /// line per pair: `{"id", "text": [f], "image": [f]}`.
    Embed {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// JSONL file of pairs (as for `eval`).
        #[arg(long)]
        pairs: PathBuf,
        /// Checkpoint id (default: the latest valid one).
        #[arg(long)]
        checkpoint: Option<String>,
        /// JSON lines (the only output format).
        #[arg(long)]
        json: bool,
    },
    /// Caption images with the UNIMO generation head (BLEU-4 / CIDEr-D with --pairs).
    Caption {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Checkpoint id (default: the latest valid one).
        #[arg(long)]
        checkpoint: Option<String>,
        /// JSONL file of pairs; their captions are the references.
        #[arg(long)]
        pairs: Option<PathBuf>,
        #[command(flatten)]
        decode: DecodeFlags,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Image files or folders of images.
        images: Vec<PathBuf>,
    },
    /// Continue a text with the UNIMO generation head.
    Generate {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Checkpoint id (default: the latest valid one).
        #[arg(long)]
        checkpoint: Option<String>,
        /// The text to continue.
        #[arg(long)]
        prompt: String,
        #[command(flatten)]
        decode: DecodeFlags,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and export checkpoints.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
}

/// Decoding flags of `caption` and `generate`.
#[derive(Debug, clap::Args)]
struct DecodeFlags {
    /// Beam width (1 = greedy).
    #[arg(long, default_value_t = 1)]
    beam: usize,
    /// Most generated tokens.
    #[arg(long, default_value_t = 20)]
    max_len: usize,
    /// Re-encode the whole sequence for every token instead of caching keys and values
    /// (for benchmarks).
    #[arg(long)]
    no_cache: bool,
}

impl From<DecodeFlags> for unimod::commands::caption::DecodeArgs {
    fn from(f: DecodeFlags) -> Self {
        Self { beam: f.beam, max_len: f.max_len, no_cache: f.no_cache }
    }
}

#[derive(Debug, Subcommand)]
enum CheckpointCommand {
    /// One row per stored checkpoint, newest first.
    List {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The metadata of one checkpoint.
    Show {
        /// Checkpoint id or `latest`.
        #[arg(default_value = "latest")]
        id: String,
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Print JSON (the only format).
        #[arg(long)]
        json: bool,
    },
    /// Write weights, model config and tokenizer.json of a checkpoint to a folder.
    Export {
        /// Checkpoint id or `latest`.
        #[arg(default_value = "latest")]
        id: String,
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Output folder (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Export a cooled-down copy: `train.cooldown_steps` steps on the checkpoint's replay
        /// buffers with the learning rate annealed to 0 (the lineage is not changed).
        #[arg(long)]
        cooldown: bool,
        /// `safetensors` (model.safetensors + config.json, for PyTorch and model.init_from)
        /// or `burn` (burn's model.bin + model_config.json).
        #[arg(long, value_enum, default_value = "safetensors")]
        format: unimod::commands::checkpoint::ExportFormat,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    use unimod::commands::{caption, checkpoint, embed, eval};
    let result = match cli.command {
        Command::Run { config, max_steps, max_seconds } => cli::run(&config, max_steps, max_seconds),
        Command::CheckConfig { config } => cli::check_config(&config),
        Command::Produce { brokers, kind, topic, inputs } => cli::produce(&brokers, kind, topic, &inputs),
        Command::Eval { config, pairs, checkpoint, json } => cli::offline(&config, |c| {
            cli::block_on(eval::eval_command(&c, &pairs, checkpoint.as_deref(), json))
        }),
        Command::Embed { config, pairs, checkpoint, json: _ } => {
            cli::offline(&config, |c| cli::block_on(embed::embed_command(&c, &pairs, checkpoint.as_deref())))
        }
        Command::Caption { config, checkpoint, pairs, decode, json, images } => cli::offline(&config, |c| {
            let input = caption::caption_input(images, pairs)?;
            cli::block_on(caption::caption_command(&c, input, checkpoint.as_deref(), decode.into(), json))
        }),
        Command::Generate { config, checkpoint, prompt, decode, json } => cli::offline(&config, |c| {
            cli::block_on(caption::generate_command(&c, &prompt, checkpoint.as_deref(), decode.into(), json))
        }),
        Command::Checkpoint { command } => match command {
            CheckpointCommand::List { config, json } => cli::offline(&config, |c| checkpoint::list(&c, json)),
            CheckpointCommand::Show { id, config, json: _ } => cli::offline(&config, |c| checkpoint::show(&c, &id)),
            CheckpointCommand::Export { id, config, out, format, cooldown } => {
                cli::offline(&config, |c| checkpoint::export(&c, &id, &out, format, cooldown))
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unimod: {}", e.message());
            ExitCode::from(e.code())
        }
    }
}
