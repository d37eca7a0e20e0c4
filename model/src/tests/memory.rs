//! The image window ([`crate::memory`]) inside the step: filled from the step's own forward
//! pass, retrieved from on the device, read back in the step's one read.

use crate::{readback, Arch, Example, ImageMemorySettings, StepReport, TrainSettings, Trainer};

use super::common::{image, image_example, loss, settings, text, tiny, Train};

fn with_window(min_similarity: f32) -> TrainSettings {
    TrainSettings {
        image_memory: ImageMemorySettings {
            capacity: 8,
            positives: 1,
            min_similarity,
        },
        ..settings()
    }
}

/// Pairs without retrieved extras (the window is the only source of image positives).
fn pairs(seeds: std::ops::Range<u32>) -> Vec<Example> {
    seeds
        .map(|s| Example {
            text: Some(text(s, 8)),
            image: Some(image(s)),
            ..Example::default()
        })
        .collect()
}

fn step_reads(trainer: &mut Trainer<Train>, batch: Vec<Example>) -> (StepReport, u64) {
    let before = readback::reads_on_this_thread();
    let report = trainer.step(&[batch], 1e-3);
    (report, readback::reads_on_this_thread() - before)
}

#[test]
fn the_window_fills_from_the_step_and_pairs_retrieve_from_it_in_the_same_read() {
    let mut trainer =
        Trainer::<Train>::new(tiny(Arch::Unimo), with_window(-1.0), Default::default())
            .expect("trainer");
    // Image-only examples enter the window from the step that trains them.
    let (report, reads) = step_reads(&mut trainer, (0..3).map(image_example).collect());
    assert!(report.applied, "{report:?}");
    assert_eq!(reads, 1);
    assert_eq!(trainer.image_window_len(), 3);
    assert!(
        report.image_positives.is_empty(),
        "nothing kept before this step"
    );
    // The same images again: overwritten in place, not added.
    step_reads(&mut trainer, (0..3).map(image_example).collect());
    assert_eq!(trainer.image_window_len(), 3);
    // Every pair retrieves its nearest kept image (threshold -1), still one read.
    let (report, reads) = step_reads(&mut trainer, pairs(10..14));
    assert!(report.applied, "{report:?}");
    assert_eq!(reads, 1);
    assert_eq!(report.image_positives.len(), 4, "{report:?}");
    assert!(
        report
            .image_positives
            .iter()
            .all(|s| (-1.0..=1.0001).contains(s)),
        "{report:?}"
    );
    // Two micro-batches: still one read, and both retrieve.
    let before = readback::reads_on_this_thread();
    let report = trainer.step(&[pairs(20..22), pairs(22..25)], 1e-3);
    assert_eq!(readback::reads_on_this_thread() - before, 1);
    assert_eq!(report.image_positives.len(), 5, "{report:?}");
}

#[test]
fn a_window_that_retrieves_nothing_leaves_the_loss_unchanged_and_a_retrieval_changes_it() {
    let plain =
        Trainer::<Train>::new(tiny(Arch::Unimo), settings(), Default::default()).expect("trainer");
    let state = plain.save().expect("save");
    let run = |settings: TrainSettings| {
        let mut t = Trainer::<Train>::load(&state, settings, Default::default()).expect("load");
        // Fill the window (with a window) and take the same first update everywhere.
        t.step(&[(0..3).map(image_example).collect()], 1e-3);
        t.step(&[pairs(10..14)], 1e-3)
    };
    let without = run(settings());
    // A threshold above any cosine: the window is there, nothing is retrieved.
    let unreachable = run(with_window(1.5));
    assert!(unreachable.image_positives.is_empty());
    let (a, b) = (
        loss(&without, "cmcl").expect("cmcl"),
        loss(&unreachable, "cmcl").expect("cmcl"),
    );
    assert!((a - b).abs() < 1e-6, "cmcl {a} vs {b}");
    let retrieved = run(with_window(-1.0));
    assert_eq!(retrieved.image_positives.len(), 4);
    let c = loss(&retrieved, "cmcl").expect("cmcl");
    assert!(
        (a - c).abs() > 1e-4,
        "a retrieved positive changes the loss: {a} vs {c}"
    );
}

#[test]
fn vilbert_and_a_disabled_window_keep_nothing() {
    for (arch, settings) in [
        (Arch::Vilbert, with_window(-1.0)),
        (Arch::Unimo, settings()),
    ] {
        let mut t =
            Trainer::<Train>::new(tiny(arch), settings, Default::default()).expect("trainer");
        t.step(&[(0..3).map(image_example).collect()], 1e-3);
        let r = t.step(&[pairs(10..14)], 1e-3);
        assert_eq!(t.image_window_len(), 0, "{arch:?}");
        assert!(r.image_positives.is_empty());
    }
}
