//! `Trainer::match_scores`: ITM-head retrieval (ViLBERT's alignment prediction) scores every
//! image-text combination; after overfitting ITM on separable pairs the true caption wins.

use unimod_model::{Arch, Example, ObjectiveWeights, Trainer, VisualInput};

use crate::common::{image, separable_pair, settings, text, tiny, Train, FEAT, SPECIAL, VOCAB};

const N: usize = 6;

/// Rows whose diagonal entry is strictly the row's maximum.
fn diagonal_wins(scores: &[Vec<f32>]) -> usize {
    scores
        .iter()
        .enumerate()
        .filter(|(i, row)| row.iter().enumerate().all(|(j, &s)| j == *i || s < row[*i]))
        .count()
}

fn itm_only(arch: Arch) -> Trainer<Train> {
    let mut config = tiny(arch);
    config.weights = ObjectiveWeights {
        mlm: 0.0,
        seq2seq: 0.0,
        mrm: 0.0,
        cmcl: 0.0,
        itm: 1.0,
        caption: 0.0,
    };
    Trainer::<Train>::new(config, settings(), Default::default()).expect("trainer")
}

/// Overfits ITM (each step's negative caption for pair `i` rotates over the other pairs)
/// and returns the diagonal wins of `match_scores` before and after, with the last loss.
fn overfit(arch: Arch) -> (usize, usize, f32, Vec<Vec<f32>>) {
    let mut trainer = itm_only(arch);
    let pairs: Vec<_> = (0..N).map(separable_pair).collect();
    let texts: Vec<Vec<u32>> = pairs.iter().map(|p| p.0.clone()).collect();
    let images: Vec<VisualInput> = pairs.iter().map(|p| p.1.clone()).collect();
    let before = diagonal_wins(&trainer.match_scores(&images, &texts, 7));
    let mut last = f32::NAN;
    let mut scores = Vec::new();
    for step in 0..240 {
        let offset = 1 + step % (N - 1);
        let batch: Vec<Example> = (0..N)
            .map(|i| Example {
                text: Some(texts[i].clone()),
                image: Some(images[i].clone()),
                hard_negatives: vec![texts[(i + offset) % N].clone()],
                ..Example::default()
            })
            .collect();
        let r = trainer.step(std::slice::from_ref(&batch), 3e-3);
        assert!(r.applied, "step {step} applied");
        last = crate::common::loss(&r, "itm").expect("itm loss");
        if step % 20 == 19 {
            scores = trainer.match_scores(&images, &texts, 7);
            if diagonal_wins(&scores) == N {
                break;
            }
        }
    }
    (before, diagonal_wins(&scores), last, scores)
}

fn assert_retrieves(arch: Arch) {
    let (before, after, loss, scores) = overfit(arch);
    eprintln!("{arch:?}: diagonal wins {before} -> {after} of {N} (itm loss {loss:.4})");
    assert!(after >= N - 1, "{arch:?}: diagonal wins {before} -> {after} (loss {loss}); scores {scores:?}");
}

#[test]
fn unimo_match_scores_retrieve_the_true_caption() {
    let _serial = crate::common::autodiff_lock();
    assert_retrieves(Arch::Unimo);
}

#[test]
fn vilbert_match_scores_retrieve_the_true_caption() {
    let _serial = crate::common::autodiff_lock();
    assert_retrieves(Arch::Vilbert);
}

#[test]
fn match_scores_shape_chunking_and_unusable_inputs() {
    let _serial = crate::common::autodiff_lock();
    for arch in [Arch::Unimo, Arch::Vilbert] {
        let trainer = itm_only(arch);
        let mut bad_image = image(9);
        bad_image.dim = FEAT + 1;
        let images = vec![image(1), bad_image, image(2)];
        let texts = vec![text(1, 5), text(2, 7), vec![SPECIAL.cls, VOCAB as u32, SPECIAL.sep], vec![], text(3, 3)];
        let scores = trainer.match_scores(&images, &texts, 4);
        assert_eq!(scores.len(), 3, "{arch:?}: one row per image");
        assert!(scores.iter().all(|r| r.len() == 5), "{arch:?}: one column per text");
        for (i, row) in scores.iter().enumerate() {
            for (j, &s) in row.iter().enumerate() {
                let unusable = i == 1 || j == 2 || j == 3;
                if unusable {
                    assert_eq!(s, f32::NEG_INFINITY, "{arch:?} [{i}][{j}]");
                } else {
                    assert!(s.is_finite(), "{arch:?} [{i}][{j}] = {s}");
                }
            }
        }
        // Chunking does not change the scores (up to padding-bucket float noise).
        let whole = trainer.match_scores(&images, &texts, 1000);
        let single = trainer.match_scores(&images, &texts, 0);
        for other in [&whole, &single] {
            for (a, b) in scores.iter().flatten().zip(other.iter().flatten()) {
                assert!(a == b || (a - b).abs() < 1e-4, "{arch:?}: {a} vs {b}");
            }
        }
        assert!(trainer.match_scores(&[], &texts, 4).is_empty());
        assert_eq!(trainer.match_scores(&images, &[], 4), vec![Vec::<f32>::new(); 3]);
    }
}
