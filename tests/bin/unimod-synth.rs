//! `unimod-synth`: writes a deterministic synthetic multimodal stream as JSONL files in the
//! message format of docs/interface.md section 3, ready for `unimod produce`.
//!
//! ```text
//! unimod-synth --out data --pairs 512 --texts 512 --images 256 --eval 100 --seed 42 --size 64
//! unimod produce --brokers 127.0.0.1:9092 --kind pair  data/pairs.jsonl
//! unimod produce --brokers 127.0.0.1:9092 --kind text  data/text.jsonl
//! unimod produce --brokers 127.0.0.1:9092 --kind image data/image.jsonl
//! unimod eval --config unimod.toml --pairs data/eval_pairs.jsonl
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use unimod_e2e::synth::{write_dataset, SynthConfig};

/// Generate a synthetic stream of image-caption pairs (coloured shapes and captions that
/// describe them), text-only sentences and image-only records, plus held-out eval pairs.
#[derive(Debug, Parser)]
#[command(name = "unimod-synth", version)]
struct Args {
    /// Output folder (created if missing); existing files of the same names are replaced.
    #[arg(long)]
    out: PathBuf,
    /// Image-caption pairs written to pairs.jsonl.
    #[arg(long, default_value_t = 256)]
    pairs: usize,
    /// Text-only records written to text.jsonl.
    #[arg(long, default_value_t = 256)]
    texts: usize,
    /// Image-only records written to image.jsonl.
    #[arg(long, default_value_t = 128)]
    images: usize,
    /// Held-out pairs (other ids, own random stream, distinct captions) written to
    /// eval_pairs.jsonl.
    #[arg(long, default_value_t = 64)]
    eval: usize,
    /// Colour/shape combinations (at most 8) held out of pairs, texts, images and
    /// eval_pairs.jsonl; eval_unseen.jsonl then holds --eval pairs showing them (a
    /// compositional split).
    #[arg(long, default_value_t = 0)]
    holdout: usize,
    /// Seed: the same seed and sizes give byte-identical files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Image side in pixels (PNG, square).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=1024))]
    size: u32,
    /// Also write the image-only records as PNG files under OUT/images/.
    #[arg(long)]
    image_files: bool,
    /// Also write records a consumer must reject: bad_text.jsonl, bad_image.jsonl,
    /// bad_pairs.jsonl (JSON objects with a missing or empty field or an image that does not
    /// decode; publishable with `unimod produce`), bad_not_json.txt (lines that are not JSON,
    /// for raw tools such as `kcat -P -l`) and bad_image_raw.bin (raw bytes that are no image,
    /// for `unimod produce --kind image`).
    #[arg(long)]
    bad: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = SynthConfig {
        seed: args.seed,
        size: args.size,
        pairs: args.pairs,
        texts: args.texts,
        images: args.images,
        eval: args.eval,
        holdout: args.holdout,
        image_files: args.image_files,
        bad: args.bad,
    };
    match write_dataset(&args.out, &cfg) {
        Ok(m) => {
            println!(
                "unimod-synth: wrote {} pairs, {} texts, {} images, {} eval pairs{} to {}",
                m.pairs,
                m.texts,
                m.images,
                m.eval,
                if cfg.bad {
                    format!(
                        ", {} bad records",
                        m.bad_text + m.bad_image + m.bad_pairs + m.bad_not_json + m.bad_image_raw
                    )
                } else {
                    String::new()
                },
                args.out.display()
            );
            if m.eval < cfg.eval {
                eprintln!(
                    "unimod-synth: only {} distinct held-out captions found (asked for {})",
                    m.eval, cfg.eval
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unimod-synth: {e:#}");
            ExitCode::FAILURE
        }
    }
}
