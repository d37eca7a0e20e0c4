//! CMCL on separable pairs reaches near-perfect retrieval in the shared space.

use unimod_model::{cosine_top_k, Arch, Example, ObjectiveWeights, Trainer};

use crate::common::{separable_pair, settings, tiny, Train};

#[test]
fn separable_pairs_reach_perfect_retrieval() {
    let _serial = crate::common::autodiff_lock();
    let mut config = tiny(Arch::Unimo);
    config.weights = ObjectiveWeights {
        mlm: 0.0,
        seq2seq: 0.0,
        mrm: 0.0,
        cmcl: 1.0,
        itm: 0.0,
        caption: 0.0,
    };
    let mut trainer = Trainer::<Train>::new(config, settings(), Default::default()).expect("trainer");
    let pairs: Vec<_> = (0..8).map(separable_pair).collect();
    let batch: Vec<Example> = pairs
        .iter()
        .map(|(t, i)| Example {
            text: Some(t.clone()),
            image: Some(i.clone()),
            ..Example::default()
        })
        .collect();
    let recall_at_1 = |trainer: &Trainer<Train>| {
        let texts = trainer.embed_texts(&pairs.iter().map(|p| p.0.clone()).collect::<Vec<_>>());
        let images = trainer.embed_images(&pairs.iter().map(|p| p.1.clone()).collect::<Vec<_>>());
        let hits = images
            .iter()
            .enumerate()
            .filter(|(i, q)| cosine_top_k(q, &texts, 1).first().map(|h| h.0) == Some(*i))
            .count();
        hits as f32 / pairs.len() as f32
    };
    let before = recall_at_1(&trainer);
    let mut last = f32::NAN;
    for _ in 0..60 {
        let r = trainer.step(std::slice::from_ref(&batch), 3e-3);
        last = crate::common::loss(&r, "cmcl").expect("cmcl loss");
    }
    let after = recall_at_1(&trainer);
    assert!(after >= 0.999, "recall@1 {before} -> {after} (loss {last})");
    assert!(last < 0.3, "cmcl loss {last}");
}
