//! Save then load reproduces outputs, bytes and subsequent training exactly.

use unimod_model::{Arch, ModelError, Trainer, TrainerState};

use crate::common::{image, mixed_batch, settings, text, tiny, Train};

fn probe(trainer: &Trainer<Train>) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    (
        trainer.embed_texts(&[text(1, 5), text(2, 9)]),
        trainer.embed_images(&[image(1), image(2)]),
    )
}

fn round_trip(arch: Arch) {
    let mut trainer = Trainer::<Train>::new(tiny(arch), settings(), Default::default()).expect("trainer");
    for _ in 0..2 {
        assert!(trainer.step(&[mixed_batch()], 1e-3).applied);
    }
    let state = trainer.save().expect("save");
    let mut loaded = Trainer::<Train>::load(&state, settings(), Default::default()).expect("load");
    assert_eq!(loaded.steps_applied(), 2);
    assert_eq!(loaded.config(), trainer.config());
    assert_eq!(probe(&loaded), probe(&trainer), "bit-exact outputs");
    assert_eq!(loaded.save().expect("save again"), state, "bit-exact bytes");
    // The optimizer state came back too: the next step is identical.
    let a = trainer.step(&[mixed_batch()], 1e-3);
    let b = loaded.step(&[mixed_batch()], 1e-3);
    assert_eq!(a.losses, b.losses);
    assert_eq!(probe(&loaded), probe(&trainer), "same update");
}

#[test]
fn unimo_state_round_trips_bit_exactly() {
    let _serial = crate::common::autodiff_lock();
    round_trip(Arch::Unimo);
}

#[test]
fn vilbert_state_round_trips_bit_exactly() {
    let _serial = crate::common::autodiff_lock();
    round_trip(Arch::Vilbert);
}

#[test]
fn corrupt_state_is_an_error_not_a_panic() {
    let _serial = crate::common::autodiff_lock();
    let trainer = Trainer::<Train>::new(tiny(Arch::Unimo), settings(), Default::default()).expect("trainer");
    let state = trainer.save().expect("save");
    let mut bad = state.clone();
    bad.model.truncate(bad.model.len() / 2);
    assert!(matches!(
        Trainer::<Train>::load(&bad, settings(), Default::default()),
        Err(ModelError::State(_))
    ));
    let bad = TrainerState {
        config_json: "{\"arch\": \"unimo\"}".into(),
        ..state
    };
    assert!(matches!(
        Trainer::<Train>::load(&bad, settings(), Default::default()),
        Err(ModelError::ConfigJson(_))
    ));
}

#[test]
fn a_fresh_trainer_saves_the_weights_it_uses() {
    let _serial = crate::common::autodiff_lock();
    // burn initialises parameters lazily; a state saved before the first step must hold
    // the same weights as the trainer itself.
    let trainer = Trainer::<Train>::new(tiny(Arch::Unimo), settings(), Default::default()).expect("trainer");
    let state = trainer.save().expect("save");
    let loaded = Trainer::<Train>::load(&state, settings(), Default::default()).expect("load");
    assert_eq!(probe(&loaded), probe(&trainer));
}
