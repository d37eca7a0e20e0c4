//! ViLBERT: stream shapes, co-attention wiring, and its objectives learning a fixed batch.

use burn::prelude::*;
use crate::attention_mask::MaskKind;
use crate::group_tensors::GroupTensors;
use crate::model::PretrainModel;
use crate::plan::{Group, ImageRows};
use crate::{Arch, Trainer};

use super::common::{image, loss, mixed_batch, settings, text, tiny, Eval, Train};

fn rows(t: Tensor<Eval, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32")
}

fn image_rows(seed: u32) -> ImageRows {
    let v = image(seed);
    ImageRows {
        features: v.features,
        locations: v.locations,
    }
}

#[test]
fn streams_have_their_own_widths_and_co_attention_joins_them() {
    let mut config = tiny(Arch::Vilbert);
    if let Some(v) = config.vilbert.as_mut() {
        v.visual_hidden = 48;
        v.visual_heads = 4;
        v.visual_ffn = 96;
    }
    let model = PretrainModel::<Eval>::new(&config, &Default::default());
    let encode = |g: &Group| model.encode(&GroupTensors::new(g, &config, &settings(), &Default::default()));
    let joint = |t: Vec<u32>, img: ImageRows| Group {
        texts: vec![t],
        images: vec![img],
        kinds: vec![MaskKind::Bidirectional],
    };
    let a = encode(&joint(text(1, 6), image_rows(1)));
    assert_eq!(a.text.clone().expect("t").dims(), [8, 32]);
    assert_eq!(a.visual.clone().expect("v").dims(), [8, 48]);
    // Text outputs depend on the image through co-attention ...
    let b = encode(&joint(text(1, 6), image_rows(2)));
    let diff = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
    assert!(diff(&rows(a.text.clone().expect("t")), &rows(b.text.expect("t"))) > 1e-4);
    // ... but a text-only row runs the text stream alone, unaffected by any image.
    let solo = encode(&Group {
        texts: vec![text(1, 6)],
        images: vec![],
        kinds: vec![MaskKind::Bidirectional],
    });
    assert!(solo.visual.is_none());
    assert_eq!(solo.text.expect("t").dims(), [8, 32]);
}

#[test]
fn vilbert_objectives_learn_a_fixed_batch() {
    let mut trainer = Trainer::<Train>::new(tiny(Arch::Vilbert), settings(), Default::default()).expect("trainer");
    let batch = mixed_batch();
    let mut history = Vec::new();
    for _ in 0..60 {
        let r = trainer.step(std::slice::from_ref(&batch), 2e-3);
        assert!(r.applied);
        history.push(r);
    }
    let names: Vec<&str> = history[0].losses.iter().map(|l| l.0).collect();
    assert_eq!(names, ["total", "mlm", "mrm", "itm"]);
    for name in names {
        let mean = |r: &[crate::StepReport]| r.iter().filter_map(|x| loss(x, name)).sum::<f32>() / r.len() as f32;
        let (first, last) = (mean(&history[..8]), mean(&history[52..]));
        eprintln!("vilbert {name}: {first:.4} -> {last:.4}");
        assert!(last < 0.8 * first, "{name}: {first} -> {last}");
    }
}
