//! The training step: every objective's loss falls on a fixed batch, reports are complete,
//! gradient accumulation, and the non-finite guard.

use unimod_model::{Arch, Example, Trainer};

use crate::common::{image_example, loss, mixed_batch, settings, text_example, tiny, Train};

/// Mean of each objective's loss over the first and the last `k` of `steps` steps.
fn first_last(arch: Arch, steps: usize, k: usize, lr: f64) -> Vec<(&'static str, f32, f32)> {
    let mut trainer = Trainer::<Train>::new(tiny(arch), settings(), Default::default()).expect("trainer");
    let batch = mixed_batch();
    let mut history = Vec::new();
    for _ in 0..steps {
        let report = trainer.step(std::slice::from_ref(&batch), lr);
        assert!(report.applied && !report.nonfinite, "{report:?}");
        history.push(report);
    }
    let names: Vec<&'static str> = history[0].losses.iter().map(|(n, _)| *n).collect();
    names
        .into_iter()
        .map(|name| {
            // Seq2seq and MLM share the text records at random, so an objective may be
            // absent from a step: average over the steps that have it.
            let mean = |r: &[unimod_model::StepReport]| {
                let v: Vec<f32> = r.iter().filter_map(|x| loss(x, name)).collect();
                assert!(v.len() * 2 >= r.len(), "{name} present in too few steps");
                v.iter().sum::<f32>() / v.len() as f32
            };
            (name, mean(&history[..k]), mean(&history[steps - k..]))
        })
        .collect()
}

#[test]
fn every_unimo_objective_learns_a_fixed_batch() {
    let _serial = crate::common::autodiff_lock();
    let result = first_last(Arch::Unimo, 60, 8, 2e-3);
    let names: Vec<&str> = result.iter().map(|r| r.0).collect();
    assert_eq!(names, ["total", "mlm", "seq2seq", "mrm", "cmcl", "itm", "caption"]);
    for (name, first, last) in result {
        eprintln!("unimo {name}: {first:.4} -> {last:.4}");
        // Regressing pseudo-random region features is pure memorisation and the slowest
        // objective here; 0.9 still fails when an objective does not learn at all.
        assert!(last < 0.9 * first, "{name}: {first} -> {last}");
    }
}

#[test]
fn report_counts_targets_and_samples() {
    let _serial = crate::common::autodiff_lock();
    let mut trainer = Trainer::<Train>::new(tiny(Arch::Unimo), settings(), Default::default()).expect("trainer");
    let report = trainer.step(&[mixed_batch()], 1e-3);
    assert_eq!(report.samples, 9);
    assert_eq!(report.dropped, 0);
    let count = |n: &str| report.counts.iter().find(|c| c.0 == n).map(|c| c.1);
    assert_eq!(count("cmcl"), Some(3), "one CMCL anchor per pair");
    assert_eq!(count("itm"), Some(6), "a matched and a rewritten caption per pair");
    assert_eq!(count("caption"), Some(3 * 9), "each caption token but [SEP] predicts the next");
    assert!(count("mrm").is_some_and(|c| c >= 6), "at least one region per image and pair");
    assert!(report.grad_norm > 0.0 && report.grad_norm.is_finite());
    assert_eq!(trainer.steps_applied(), 1);
    // Texts: 3 texts of 12 tokens and 3 captions of 10.
    assert_eq!(report.tokens, 3 * 12 + 3 * 10);
}

#[test]
fn unusable_examples_are_dropped_not_fatal() {
    let _serial = crate::common::autodiff_lock();
    let mut trainer = Trainer::<Train>::new(tiny(Arch::Unimo), settings(), Default::default()).expect("trainer");
    let mut bad_image = image_example(1);
    if let Some(i) = bad_image.image.as_mut() {
        i.features.pop();
    }
    let bad_text = Example {
        text: Some(vec![0, 5000, 2]),
        ..Example::default()
    };
    let report = trainer.step(&[vec![bad_image, bad_text, Example::default(), text_example(1)]], 1e-3);
    assert_eq!((report.samples, report.dropped), (1, 3));
    assert!(report.applied);
}

#[test]
fn micro_batches_accumulate_into_one_update() {
    let _serial = crate::common::autodiff_lock();
    let mut trainer = Trainer::<Train>::new(tiny(Arch::Unimo), settings(), Default::default()).expect("trainer");
    let report = trainer.step(&[vec![text_example(1)], vec![image_example(2)], vec![text_example(3)]], 1e-3);
    assert!(report.applied);
    assert_eq!(report.samples, 3);
    assert_eq!(trainer.steps_applied(), 1);
}

#[test]
fn non_finite_input_skips_the_update() {
    let _serial = crate::common::autodiff_lock();
    let mut trainer = Trainer::<Train>::new(tiny(Arch::Unimo), settings(), Default::default()).expect("trainer");
    let probe = vec![crate::common::text(9, 6)];
    let before = trainer.embed_texts(&probe);
    let mut poisoned = image_example(1);
    if let Some(i) = poisoned.image.as_mut() {
        i.features.iter_mut().for_each(|x| *x = f32::NAN);
    }
    let report = trainer.step(&[vec![poisoned, text_example(2)]], 1e-2);
    assert!(report.nonfinite && !report.applied, "{report:?}");
    assert_eq!(trainer.steps_applied(), 0);
    assert_eq!(trainer.embed_texts(&probe), before, "weights untouched");
    // The next healthy step trains normally.
    let report = trainer.step(&[vec![text_example(2)]], 1e-2);
    assert!(report.applied && !report.nonfinite);
    assert_ne!(trainer.embed_texts(&probe), before);
}

/// Each objective trained alone on the fixed batch.
fn alone(objective: &'static str, steps: usize) -> (f32, f32) {
    let mut config = tiny(Arch::Unimo);
    let w = |name: &str| if name == objective { 1.0 } else { 0.0 };
    config.weights = unimod_model::ObjectiveWeights {
        mlm: w("mlm"),
        seq2seq: w("seq2seq"),
        mrm: w("mrm"),
        cmcl: w("cmcl"),
        itm: w("itm"),
        caption: w("caption"),
    };
    let mut trainer = Trainer::<Train>::new(config, settings(), Default::default()).expect("trainer");
    let batch = mixed_batch();
    let values: Vec<f32> = (0..steps)
        .map(|_| {
            let r = trainer.step(std::slice::from_ref(&batch), 2e-3);
            assert_eq!(r.losses.len(), 2, "total and {objective} only: {:?}", r.losses);
            loss(&r, objective).expect("the objective in use")
        })
        .collect();
    let k = steps / 8;
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    (mean(&values[..k]), mean(&values[steps - k..]))
}

#[test]
fn each_objective_alone_learns_a_fixed_batch() {
    let _serial = crate::common::autodiff_lock();
    for objective in ["mlm", "seq2seq", "mrm", "cmcl", "itm", "caption"] {
        let (first, last) = alone(objective, 64);
        eprintln!("alone {objective}: {first:.4} -> {last:.4}");
        assert!(last < 0.8 * first, "{objective}: {first} -> {last}");
    }
}

#[test]
fn region_class_distributions_add_a_kl_term_that_learns() {
    let _serial = crate::common::autodiff_lock();
    let mut config = tiny(Arch::Unimo);
    config.region_classes = 5;
    config.weights = unimod_model::ObjectiveWeights {
        mlm: 0.0,
        seq2seq: 0.0,
        mrm: 1.0,
        cmcl: 0.0,
        itm: 0.0,
        caption: 0.0,
    };
    let with_classes = |seed: u32| {
        let mut e = image_example(seed);
        if let Some(img) = e.image.as_mut() {
            let rows = img.rows();
            // Region r puts its mass on class r % 5: learnable from the location alone.
            let probs = (0..rows * 5)
                .map(|i| if i % 5 == (i / 5) % 5 { 0.9 } else { 0.025 })
                .collect();
            img.class_probs = Some((5, probs));
        }
        e
    };
    let batch: Vec<Example> = (0..4).map(with_classes).collect();
    let plain: Vec<Example> = (0..4).map(image_example).collect();
    let mut trainer = Trainer::<Train>::new(config.clone(), settings(), Default::default()).expect("trainer");
    let mut twin = Trainer::<Train>::new(config, settings(), Default::default()).expect("trainer");
    // Same weights and masks: the only difference in the first loss is the KL term (> 0).
    let with_kl = loss(&trainer.step(std::slice::from_ref(&batch), 2e-3), "mrm").expect("mrm");
    let without = loss(&twin.step(std::slice::from_ref(&plain), 2e-3), "mrm").expect("mrm");
    assert!(with_kl > without + 0.5, "KL of a near-uniform prediction: {with_kl} vs {without}");
    let mut last = with_kl;
    for _ in 0..40 {
        last = loss(&trainer.step(std::slice::from_ref(&batch), 2e-3), "mrm").expect("mrm");
    }
    // Regression (about 0.48 of the start) falls slowly; the KL part must fall for this.
    assert!(last < 0.7 * with_kl, "{with_kl} -> {last}");
}

#[test]
fn trainer_can_move_to_a_training_thread() {
    let _serial = crate::common::autodiff_lock();
    fn assert_send<T: Send>() {}
    assert_send::<Trainer<Train>>();
    assert_send::<unimod_model::TrainerState>();
}
