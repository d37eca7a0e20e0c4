//! Tiny configurations and synthetic examples shared by the tests.

use unimod_model::{Arch, Example, ModelConfig, SpecialTokens, TrainSettings, VisualInput};

pub const SPECIAL: SpecialTokens = SpecialTokens {
    pad: 1,
    cls: 0,
    sep: 2,
    mask: 3,
    img: 4,
};
pub const VOCAB: usize = 120;
pub const FEAT: usize = 12;

pub type Train = burn::backend::Autodiff<burn::backend::NdArray>;
pub type Eval = burn::backend::NdArray;

/// A tiny config: 2 layers, hidden 32, 2 heads, no dropout (outputs are deterministic).
pub fn tiny(arch: Arch) -> ModelConfig {
    let mut c = ModelConfig::custom(arch, 2, 32, 2, VOCAB, FEAT, SPECIAL).expect("valid tiny config");
    c.dropout = 0.0;
    c.max_text_len = 24;
    c.max_objects = 12;
    c
}

pub fn settings() -> TrainSettings {
    TrainSettings {
        text_buckets: vec![8, 16, 24],
        object_buckets: vec![4, 8, 12],
        seed: 7,
        ..TrainSettings::default()
    }
}

/// `[CLS] words.. [SEP]` with words drawn deterministically from `seed`.
pub fn text(seed: u32, len: usize) -> Vec<u32> {
    let mut t = vec![SPECIAL.cls];
    t.extend((0..len as u32).map(|i| 10 + (seed * 7 + i * 13) % (VOCAB as u32 - 10)));
    t.push(SPECIAL.sep);
    t
}

/// An image with a global row and a 2x2 grid plus one extra box; features from `seed`.
pub fn image(seed: u32) -> VisualInput {
    let mut locations = vec![[0.0, 0.0, 1.0, 1.0, 1.0]];
    for y in 0..2 {
        for x in 0..2 {
            let (x1, y1) = (x as f32 * 0.5, y as f32 * 0.5);
            locations.push([x1, y1, x1 + 0.5, y1 + 0.5, 0.25]);
        }
    }
    locations.push([0.2, 0.2, 0.7, 0.7, 0.25]);
    let rows = locations.len();
    let mut features: Vec<f32> = (0..rows * FEAT)
        .map(|i| ((seed as f32 + 1.0) * 0.37 * (i as f32 + 1.0)).sin())
        .collect();
    // Row 0 is the mean of the regions, as ingest provides it.
    for d in 0..FEAT {
        features[d] = (1..rows).map(|r| features[r * FEAT + d]).sum::<f32>() / (rows - 1) as f32;
    }
    VisualInput {
        dim: FEAT,
        features,
        locations,
        class_probs: None,
    }
}

pub fn text_example(seed: u32) -> Example {
    Example {
        text: Some(text(seed, 10)),
        ..Example::default()
    }
}

pub fn image_example(seed: u32) -> Example {
    Example {
        image: Some(image(seed)),
        ..Example::default()
    }
}

pub fn pair_example(seed: u32) -> Example {
    Example {
        text: Some(text(seed, 8)),
        image: Some(image(seed)),
        hard_negatives: vec![text(seed + 100, 8)],
        extra_texts: vec![text(seed + 200, 6)],
        extra_images: vec![image(seed + 300)],
    }
}

/// A fixed mixed batch: texts, images and pairs.
pub fn mixed_batch() -> Vec<Example> {
    let mut batch = Vec::new();
    for s in 0..3 {
        batch.push(text_example(s));
        batch.push(image_example(s));
        batch.push(pair_example(s));
    }
    batch
}

pub fn loss(report: &unimod_model::StepReport, name: &str) -> Option<f32> {
    report.losses.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}
