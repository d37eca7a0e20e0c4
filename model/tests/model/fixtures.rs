// Tiny configurations and synthetic examples shared by the integration tests (through
// `common.rs`) and the crate's unit tests (`src/tests/mod.rs`), included by both: the
// including module imports `Arch, Example, ModelConfig, SpecialTokens, StepReport,
// TrainSettings, VisualInput`.

pub(crate) const SPECIAL: SpecialTokens = SpecialTokens {
    pad: 1,
    cls: 0,
    sep: 2,
    mask: 3,
    img: 4,
};
pub(crate) const VOCAB: usize = 120;
pub(crate) const FEAT: usize = 12;

pub(crate) type Train = burn::backend::Autodiff<burn::backend::NdArray>;
pub(crate) type Eval = burn::backend::NdArray;

/// A tiny config: 2 layers, hidden 32, 2 heads, no dropout (outputs are deterministic).
pub(crate) fn tiny(arch: Arch) -> ModelConfig {
    let mut c = ModelConfig::custom(arch, 2, 32, 2, VOCAB, FEAT, SPECIAL).expect("valid tiny config");
    c.dropout = 0.0;
    c.max_text_len = 24;
    c.max_objects = 12;
    c
}

pub(crate) fn settings() -> TrainSettings {
    TrainSettings {
        text_buckets: vec![8, 16, 24],
        object_buckets: vec![4, 8, 12],
        seed: 7,
        ..TrainSettings::default()
    }
}

/// `[CLS] words.. [SEP]` with words drawn deterministically from `seed`.
pub(crate) fn text(seed: u32, len: usize) -> Vec<u32> {
    let mut t = vec![SPECIAL.cls];
    t.extend((0..len as u32).map(|i| 10 + (seed * 7 + i * 13) % (VOCAB as u32 - 10)));
    t.push(SPECIAL.sep);
    t
}

/// An image with a global row and a 2x2 grid plus one extra box; features from `seed`.
pub(crate) fn image(seed: u32) -> VisualInput {
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

pub(crate) fn text_example(seed: u32) -> Example {
    Example {
        text: Some(text(seed, 10)),
        ..Example::default()
    }
}

pub(crate) fn image_example(seed: u32) -> Example {
    Example {
        image: Some(image(seed)),
        ..Example::default()
    }
}

pub(crate) fn pair_example(seed: u32) -> Example {
    Example {
        text: Some(text(seed, 8)),
        image: Some(image(seed)),
        hard_negatives: vec![text(seed + 100, 8)],
        extra_texts: vec![text(seed + 200, 6)],
        extra_images: vec![image(seed + 300)],
    }
}

/// A fixed mixed batch: texts, images and pairs.
pub(crate) fn mixed_batch() -> Vec<Example> {
    let mut batch = Vec::new();
    for s in 0..3 {
        batch.push(text_example(s));
        batch.push(image_example(s));
        batch.push(pair_example(s));
    }
    batch
}

pub(crate) fn loss(report: &StepReport, name: &str) -> Option<f32> {
    report.losses.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// Pair `i`: caption `[CLS] 10+i 40+i [SEP]`, image whose regions light up feature `i`.
pub(crate) fn separable_pair(i: usize) -> (Vec<u32>, VisualInput) {
    let caption = vec![SPECIAL.cls, 10 + i as u32, 40 + i as u32, SPECIAL.sep];
    let rows = 3;
    let mut features = vec![0.0f32; rows * FEAT];
    for r in 0..rows {
        features[r * FEAT + i] = 2.0;
        features[r * FEAT + (i + 3) % FEAT] = -1.0;
    }
    let image = VisualInput {
        dim: FEAT,
        features,
        locations: vec![[0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0, 0.5], [0.5, 0.0, 1.0, 1.0, 0.5]],
        class_probs: None,
    };
    (caption, image)
}

/// Serialises the tests that train in one test process. burn 0.21's autodiff keeps one
/// process-wide registry of computation graphs; tests that ran backward passes concurrently
/// in one process occasionally got different gradients for the same step (the warm-start and
/// round-trip comparisons, a few times in 20 runs on a loaded machine, before and after the
/// fused CPU kernels). The daemon trains on one thread, so only tests are affected.
pub(crate) fn autodiff_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
