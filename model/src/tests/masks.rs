//! Output shapes, and every attention mask tested by perturbing an input that must not be
//! visible and checking that the outputs it must not reach do not change.

use burn::prelude::*;
use burn::tensor::TensorData;
use crate::attention_mask::MaskKind;
use crate::group_tensors::{Encoded, GroupTensors};
use crate::model::PretrainModel;
use crate::plan::{Group, ImageRows};
use crate::Arch;

use super::common::{image, settings, text, tiny, Eval, FEAT};

fn rows_of(t: Tensor<Eval, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 data")
}

fn image_rows(seed: u32) -> ImageRows {
    let v = image(seed);
    ImageRows {
        features: v.features,
        locations: v.locations,
    }
}

fn encode(model: &PretrainModel<Eval>, group: &Group, tweak: impl Fn(&mut GroupTensors<Eval>)) -> Encoded<Eval> {
    let config = tiny(Arch::Unimo);
    let mut input = GroupTensors::new(group, &config, &settings(), &Default::default());
    tweak(&mut input);
    model.encode(&input)
}

/// Hidden row `pos` of row `row` (stride `stride`, width `d`).
fn state(all: &[f32], row: usize, pos: usize, stride: usize, d: usize) -> Vec<f32> {
    let start = (row * stride + pos) * d;
    all[start..start + d].to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn joint_encoding_has_bucketed_shapes() {
    let config = tiny(Arch::Unimo);
    let model = PretrainModel::<Eval>::new(&config, &Default::default());
    let group = Group {
        texts: vec![text(1, 5), text(2, 9)],
        images: vec![image_rows(1), image_rows(2)],
        kinds: vec![MaskKind::Bidirectional; 2],
    };
    let out = encode(&model, &group, |_| {});
    // The longest text has 11 tokens -> bucket 16; images have 6 rows -> bucket 8.
    assert_eq!((out.t, out.n), (16, 8));
    assert_eq!(out.text.expect("text states").dims(), [2 * 16, 32]);
    assert_eq!(out.visual.expect("visual states").dims(), [2 * 8, 32]);
}

#[test]
fn padding_is_invisible() {
    let config = tiny(Arch::Unimo);
    let model = PretrainModel::<Eval>::new(&config, &Default::default());
    let group = Group {
        texts: vec![text(1, 5)],
        images: vec![image_rows(1)],
        kinds: vec![MaskKind::Bidirectional],
    };
    let base = encode(&model, &group, |_| {});
    let poked = encode(&model, &group, |input| {
        // Overwrite the padded text slots and padded visual rows with other values.
        let ids = input.ids.take().expect("ids");
        let mut v: Vec<i64> = ids.into_data().convert::<i64>().to_vec().expect("ids");
        for x in v.iter_mut().skip(7) {
            *x = 50;
        }
        input.ids = Some(Tensor::from_data(TensorData::new(v, [1, input.t]), &Default::default()));
        let f = input.features.take().expect("features");
        let mut fv: Vec<f32> = f.into_data().convert::<f32>().to_vec().expect("features");
        for x in fv.iter_mut().skip(6 * FEAT) {
            *x = 3.0;
        }
        input.features = Some(Tensor::from_data(TensorData::new(fv, [1, input.n, FEAT]), &Default::default()));
    });
    let (bt, pt) = (rows_of(base.text.expect("t")), rows_of(poked.text.expect("t")));
    let (bv, pv) = (rows_of(base.visual.expect("v")), rows_of(poked.visual.expect("v")));
    for pos in 0..7 {
        assert!(max_diff(&state(&bt, 0, pos, base.t, 32), &state(&pt, 0, pos, poked.t, 32)) < 1e-6);
    }
    for pos in 0..6 {
        assert!(max_diff(&state(&bv, 0, pos, base.n, 32), &state(&pv, 0, pos, poked.n, 32)) < 1e-6);
    }
}

#[test]
fn bidirectional_mask_lets_text_see_everything() {
    // The positive control for the perturbation tests: a visible change does propagate.
    let config = tiny(Arch::Unimo);
    let model = PretrainModel::<Eval>::new(&config, &Default::default());
    let mut changed = text(1, 5);
    changed[5] = 77;
    let group = |t: Vec<u32>| Group {
        texts: vec![t],
        images: vec![image_rows(1)],
        kinds: vec![MaskKind::Bidirectional],
    };
    let a = encode(&model, &group(text(1, 5)), |_| {});
    let b = encode(&model, &group(changed), |_| {});
    let (av, bv) = (rows_of(a.visual.expect("v")), rows_of(b.visual.expect("v")));
    assert!(max_diff(&state(&av, 0, 0, a.n, 32), &state(&bv, 0, 0, b.n, 32)) > 1e-4);
}

#[test]
fn prefix_lm_hides_later_target_tokens() {
    let config = tiny(Arch::Unimo);
    let model = PretrainModel::<Eval>::new(&config, &Default::default());
    let kind = MaskKind::PrefixLm { source_len: 4 };
    let original = text(3, 8); // 10 tokens: source 0..4, target 4..10
    let mut changed = original.clone();
    changed[7] = 99;
    let group = |t: Vec<u32>| Group {
        texts: vec![t],
        images: vec![],
        kinds: vec![kind],
    };
    let a = encode(&model, &group(original), |_| {});
    let b = encode(&model, &group(changed), |_| {});
    let (at, bt) = (rows_of(a.text.expect("t")), rows_of(b.text.expect("t")));
    for pos in 0..7 {
        let d = max_diff(&state(&at, 0, pos, a.t, 32), &state(&bt, 0, pos, b.t, 32));
        assert!(d < 1e-6, "position {pos} saw the later token 7 (diff {d})");
    }
    for pos in 7..10 {
        let d = max_diff(&state(&at, 0, pos, a.t, 32), &state(&bt, 0, pos, b.t, 32));
        assert!(d > 1e-4, "position {pos} should see token 7");
    }
}

#[test]
fn image_to_text_keeps_image_rows_blind_to_text() {
    let config = tiny(Arch::Unimo);
    let model = PretrainModel::<Eval>::new(&config, &Default::default());
    let original = text(4, 6);
    let mut changed = original.clone();
    changed[3] = 98;
    let group = |t: Vec<u32>| Group {
        texts: vec![t],
        images: vec![image_rows(4)],
        kinds: vec![MaskKind::ImageToText],
    };
    let a = encode(&model, &group(original), |_| {});
    let b = encode(&model, &group(changed), |_| {});
    let (av, bv) = (rows_of(a.visual.expect("v")), rows_of(b.visual.expect("v")));
    for pos in 0..6 {
        assert!(max_diff(&state(&av, 0, pos, a.n, 32), &state(&bv, 0, pos, b.n, 32)) < 1e-6);
    }
    let (at, bt) = (rows_of(a.text.expect("t")), rows_of(b.text.expect("t")));
    for pos in 0..3 {
        assert!(max_diff(&state(&at, 0, pos, a.t, 32), &state(&bt, 0, pos, b.t, 32)) < 1e-6);
    }
    assert!(max_diff(&state(&at, 0, 4, a.t, 32), &state(&bt, 0, 4, b.t, 32)) > 1e-4);
}
