//! Finding the examples that make a step non-finite.
//!
//! When a step's loss or gradient is not finite, no update was applied. [`isolate`] splits the
//! step's examples in halves and steps each half again: a half whose step is finite is
//! trained (its update is applied), a non-finite half is split further, down to single
//! examples, which are the culprits. So the rest of the batch is trained and only the
//! culprits are left out. When most examples are non-finite one by one, the model itself has
//! diverged (not the data): [`Isolation::model_diverged`] says so and nothing is rejected.

use burn::tensor::backend::AutodiffBackend;
use unimod_model::{Example, Trainer};

/// What [`isolate`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolation {
    /// Indices of the examples whose update was applied (ascending).
    pub applied: Vec<usize>,
    /// Indices of the examples that are non-finite on their own (ascending).
    pub culprits: Vec<usize>,
    /// Steps run to find them (each applied or skipped).
    pub probes: usize,
}

impl Isolation {
    /// More than half of the examples are non-finite on their own: the model (weights,
    /// learning rate) is at fault, not the data.
    pub fn model_diverged(&self, examples: usize) -> bool {
        examples > 1 && self.culprits.len() * 2 > examples
    }
}

/// Steps halves of `examples` (after a non-finite step over all of them) until the culprits
/// are single examples; see the module header. `lr` is the learning rate of the failed step.
pub fn isolate<B: AutodiffBackend>(trainer: &mut Trainer<B>, examples: Vec<Example>, lr: f64) -> Isolation {
    let mut out = Isolation::default();
    let items: Vec<(usize, Example)> = examples.into_iter().enumerate().collect();
    if items.len() == 1 {
        out.culprits.push(0);
        return out;
    }
    bisect(trainer, items, lr, &mut out);
    out.applied.sort_unstable();
    out.culprits.sort_unstable();
    out
}

/// `items` failed together: try each half.
fn bisect<B: AutodiffBackend>(trainer: &mut Trainer<B>, mut items: Vec<(usize, Example)>, lr: f64, out: &mut Isolation) {
    let second = items.split_off(items.len() / 2);
    for half in [items, second] {
        if half.is_empty() {
            continue;
        }
        let batch: Vec<Example> = half.iter().map(|(_, e)| e.clone()).collect();
        let report = trainer.step(&[batch], lr);
        out.probes += 1;
        if !report.nonfinite {
            out.applied.extend(half.iter().map(|(i, _)| *i));
        } else if half.len() == 1 {
            out.culprits.push(half[0].0);
        } else {
            bisect(trainer, half, lr, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, NdArray};
    use unimod_model::{Arch, ModelConfig, SpecialTokens, TrainSettings, VisualInput};

    use super::*;

    type B = Autodiff<NdArray>;

    fn trainer() -> Trainer<B> {
        let special = SpecialTokens { pad: 0, cls: 1, sep: 2, mask: 3, img: 4 };
        let mut mc = ModelConfig::custom(Arch::Unimo, 1, 32, 2, 64, 4, special).expect("config");
        mc.max_text_len = 16;
        mc.max_objects = 4;
        let settings = TrainSettings { text_buckets: vec![16], object_buckets: vec![4], ..TrainSettings::default() };
        Trainer::new(mc, settings, Default::default()).expect("trainer")
    }

    fn pair(i: u32, scale: f32) -> Example {
        let mut features: Vec<f32> = (0..12).map(|k| scale * (((k + i) as f32) * 0.1).sin()).collect();
        if scale > 1e30 {
            // The global row as an f32 mean of such regions used to come out: infinite.
            features[..4].fill(f32::INFINITY);
        }
        Example {
            text: Some(vec![1, 10 + i % 40, 11 + i % 40, 12, 13, 2]),
            image: Some(VisualInput {
                dim: 4,
                features,
                locations: vec![[0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5, 0.25], [0.5, 0.5, 1.0, 1.0, 0.25]],
                class_probs: None,
            }),
            ..Example::default()
        }
    }

    /// A batch with two examples whose features overflow the model (3e38 passes no check on
    /// this path): the whole step is non-finite; isolation rejects exactly those two and
    /// applies updates for the other six.
    #[test]
    fn culprits_are_found_and_the_rest_is_trained() {
        let mut t = trainer();
        let mut batch: Vec<Example> = (0..8).map(|i| pair(i, 1.0)).collect();
        batch[2] = pair(2, 3e38);
        batch[7] = pair(7, 3e38);
        let whole = t.step(&[batch.clone()], 1e-3);
        assert!(whole.nonfinite && !whole.applied, "the hostile batch must be non-finite: {whole:?}");
        let before = t.steps_applied();
        let found = isolate(&mut t, batch, 1e-3);
        assert_eq!(found.culprits, vec![2, 7]);
        assert_eq!(found.applied, vec![0, 1, 3, 4, 5, 6]);
        assert!(!found.model_diverged(8));
        assert!(t.steps_applied() > before, "the good examples were trained");
        // The model is still healthy: a good batch trains.
        let good: Vec<Example> = (0..4).map(|i| pair(i, 1.0)).collect();
        let r = t.step(&[good], 1e-3);
        assert!(r.applied && !r.nonfinite, "{r:?}");
    }

    #[test]
    fn all_bad_is_reported_as_divergence() {
        let mut t = trainer();
        let batch: Vec<Example> = (0..4).map(|i| pair(i, 3e38)).collect();
        let found = isolate(&mut t, batch, 1e-3);
        assert_eq!(found.culprits, vec![0, 1, 2, 3]);
        assert!(found.applied.is_empty());
        assert!(found.model_diverged(4));
    }
}
