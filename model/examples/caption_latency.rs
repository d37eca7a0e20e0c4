//! Caption latency on the CPU (ndarray): greedy and beam search, with and without the
//! key/value cache, for the tiny and small presets. Weights are random and every caption is
//! forced to exactly `LEN` tokens (`min_len = max_len`), so each configuration decodes the same
//! number of steps.
//!
//! `cargo run --release -p unimod-model --example caption_latency [-- RUNS]`

use std::time::Instant;

use unimod_model::generate::caption;
use unimod_model::model::PretrainModel;
use unimod_model::{Arch, DecodeOptions, ModelConfig, SpecialTokens, VisualInput};

type B = burn::backend::NdArray;

/// Tokens per caption.
const LEN: usize = 20;
/// Vocabulary of the quickstart's tokenizer.
const VOCAB: usize = 2000;
/// Built-in crops with the default `image.crop_size = 16`: 3 x 16 x 16.
const FEAT: usize = 768;
/// Rows of the default object pyramid plus the global row.
const ROWS: usize = 67;

fn image(seed: f32) -> VisualInput {
    let features = (0..ROWS * FEAT).map(|i| ((i as f32 + 1.0) * 0.013 * seed).sin()).collect();
    let locations = (0..ROWS).map(|r| [0.0, 0.0, 1.0, 1.0, (r as f32 + 1.0) / ROWS as f32]).collect();
    VisualInput { dim: FEAT, features, locations, class_probs: None }
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let special = SpecialTokens { pad: 1, cls: 0, sep: 2, mask: 3, img: 4 };
    println!("size   beam  cache   ms/caption (median of {runs}, {LEN} tokens, {ROWS} image rows)");
    for size in ["tiny", "small"] {
        let mut config = ModelConfig::preset(Arch::Unimo, size, VOCAB, FEAT, special).expect("config");
        config.max_text_len = 64;
        config.max_objects = ROWS;
        let model = PretrainModel::<B>::new(&config, &Default::default());
        for beam in [1, 4] {
            for use_cache in [true, false] {
                let opts = DecodeOptions { beam, max_len: LEN, min_len: LEN, no_repeat_ngram: 0, use_cache, ..DecodeOptions::default() };
                let mut times: Vec<f64> = (0..runs + 1)
                    .map(|i| {
                        let img = image(1.0 + i as f32);
                        let started = Instant::now();
                        let out = caption(&model, &img, &opts).expect("caption");
                        assert_eq!(out.ids.len(), LEN);
                        started.elapsed().as_secs_f64() * 1e3
                    })
                    .skip(1)
                    .collect();
                times.sort_by(f64::total_cmp);
                let cache = if use_cache { "yes" } else { "no" };
                println!("{size:6} {beam:4}  {cache:5}  {:8.1}", times[times.len() / 2]);
            }
        }
    }
}
