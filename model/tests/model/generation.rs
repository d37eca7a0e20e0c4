//! The caption objective teaches the generation head: after training on a few pairs, greedy
//! and beam decoding give each training image its own caption back.

use unimod_model::{Arch, DecodeOptions, Trainer};

use crate::common::{image, pair_example, settings, text, tiny, Train};

#[test]
fn trained_captions_are_decoded_back() {
    let _serial = crate::common::autodiff_lock();
    let mut config = tiny(Arch::Unimo);
    config.weights = unimod_model::ObjectiveWeights { mlm: 0.0, seq2seq: 0.0, mrm: 0.0, cmcl: 0.0, itm: 0.0, caption: 1.0 };
    let mut trainer = Trainer::<Train>::new(config, settings(), Default::default()).expect("trainer");
    let batch: Vec<_> = (0..3).map(pair_example).collect();
    let before = trainer.inference(0);
    let mut last = f32::NAN;
    for _ in 0..150 {
        let r = trainer.step(std::slice::from_ref(&batch), 3e-3);
        last = crate::common::loss(&r, "caption").expect("caption loss");
    }
    eprintln!("caption loss after 150 steps: {last:.4}");
    let after = trainer.inference(150);
    for seed in 0..3 {
        let want: Vec<u32> = text(seed, 8)[1..9].to_vec();
        for beam in [1, 3] {
            let opts = DecodeOptions { beam, max_len: 12, ..DecodeOptions::default() };
            let got = after.caption(&image(seed), &opts).expect("caption");
            assert_eq!(got.ids, want, "image {seed}, beam {beam}");
            assert!(got.finished, "ends with [SEP]");
        }
        let untrained = before.caption(&image(seed), &DecodeOptions::default()).expect("caption");
        assert_ne!(untrained.ids, want, "an untrained model does not know the caption");
    }
}
