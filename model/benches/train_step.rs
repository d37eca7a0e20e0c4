//! Training-step throughput at the shapes of `shared/bench/torch_unimo_step.py`: a batch of
//! 32 image-caption pairs, 32 text tokens, 31 visual rows of 192 features, vocabulary 8192;
//! objectives MLM (tied output), masked region regression and in-batch contrastive
//! learning (image and text encoded separately), AdamW with clipping at 1.0.
//!
//! `cargo bench -p unimod-model --bench train_step` (sizes from `UNIMOD_BENCH_SIZES`,
//! default `tiny,small`). Criterion's throughput line is samples/s.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use unimod_rng::SplitMix64;
use unimod_model::{
    Arch, CpuBackend, Example, ModelConfig, ObjectiveWeights, SpecialTokens, TrainSettings, Trainer, VisualInput,
};

const BATCH: usize = 32;
const TEXT_LEN: usize = 32;
const OBJECTS: usize = 31;
const FEAT: usize = 192;
const VOCAB: usize = 8192;

const SPECIAL: SpecialTokens = SpecialTokens {
    pad: 1,
    cls: 0,
    sep: 2,
    mask: 3,
    img: 4,
};

fn batch() -> Vec<Example> {
    // SplitMix64, so that the inputs do not depend on `rand`'s version.
    let mut rng = SplitMix64::new(0);
    (0..BATCH)
        .map(|_| {
            let mut text = vec![SPECIAL.cls];
            text.extend((0..TEXT_LEN - 2).map(|_| 5 + (rng.next_u64() % (VOCAB as u64 - 5)) as u32));
            text.push(SPECIAL.sep);
            let features: Vec<f32> = (0..OBJECTS * FEAT).map(|_| rng.unit() * 2.0 - 1.0).collect();
            let locations = (0..OBJECTS)
                .map(|_| {
                    let (x, y) = (rng.unit() * 0.5, rng.unit() * 0.5);
                    let (w, h) = (0.1 + rng.unit() * 0.4, 0.1 + rng.unit() * 0.4);
                    [x, y, x + w, y + h, w * h]
                })
                .collect();
            Example {
                text: Some(text),
                image: Some(VisualInput {
                    dim: FEAT,
                    features,
                    locations,
                    class_probs: None,
                }),
                ..Example::default()
            }
        })
        .collect()
}

fn trainer(size: &str) -> Trainer<CpuBackend> {
    let mut config = ModelConfig::preset(Arch::Unimo, size, VOCAB, FEAT, SPECIAL).expect("preset");
    config.weights = ObjectiveWeights {
        mlm: 1.0,
        seq2seq: 0.0,
        mrm: 1.0,
        cmcl: 1.0,
        itm: 0.0,
        caption: 0.0,
    };
    let settings = TrainSettings {
        text_buckets: vec![TEXT_LEN],
        object_buckets: vec![OBJECTS],
        ..TrainSettings::default()
    };
    Trainer::new(config, settings, Default::default()).expect("trainer")
}

fn train_step(c: &mut Criterion) {
    let sizes = std::env::var("UNIMOD_BENCH_SIZES").unwrap_or_else(|_| "tiny,small".into());
    let data = vec![batch()];
    let mut group = c.benchmark_group("unimo_train_step");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(3));
    group.measurement_time(Duration::from_secs(20));
    for size in sizes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let mut t = trainer(size);
        eprintln!("{size}: {} parameters", t.num_params());
        group.bench_function(size, |b| {
            b.iter(|| {
                let report = t.step(&data, 1e-4);
                assert!(report.applied, "{report:?}");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
