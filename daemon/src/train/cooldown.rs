//! Cooldown snapshots: which weights to export from an endless run. The continual-pretraining
//! literature anneals the learning rate to 0 over a short stretch before taking a snapshot;
//! an endless lineage cannot do that to itself without leaving its constant-LR schedule.
//!
//! The design (the simplest to make correct): `unimod checkpoint export --cooldown` loads a
//! checkpoint into a *separate* trainer (weights and optimizer moments), trains it for
//! `train.cooldown_steps` steps on batches drawn from the checkpoint's own replay buffers
//! (`train.batch_size` items per step, kinds by `train.mix`), with the learning rate annealed
//! linearly from the lineage's rate at that step to 0 ([`super::schedule::cooldown_lr`]), and
//! writes the cooled weights as the export, tagged `"cooldown"` in its `checkpoint.json`. The
//! store is only read (directly or through the running daemon's port): the lineage's step,
//! schedule, weights and offsets are untouched, and `run` never sees the cooled weights.

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use unimod_model::{Example, Trainer};

use super::examples::replay_example;
use super::replay::ReplayBuffers;
use super::schedule::cooldown_lr;

/// What a cooldown did (written into the export's `checkpoint.json` as `cooldown`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CooldownReport {
    /// Always `"cooldown"`: the tag of the cooled snapshot.
    pub tag: &'static str,
    /// The lineage step the cooldown started from.
    pub from_step: u64,
    /// Cooldown steps run (0 when the checkpoint had no replay items).
    pub steps: u64,
    /// Learning rate of the first cooldown step (the lineage's rate at `from_step`).
    pub start_learning_rate: f64,
    /// Replay items trained on, all steps together.
    pub samples: u64,
    /// Steps whose update was skipped as non-finite.
    pub nonfinite_steps: u64,
    /// Total loss of the first and of the last cooldown step.
    pub first_loss: Option<f32>,
    /// See `first_loss`.
    pub last_loss: Option<f32>,
}

/// Runs the cooldown on `trainer` (a copy of the lineage's trainer: this changes it).
pub fn cool_down<B: AutodiffBackend>(
    trainer: &mut Trainer<B>,
    replay: &mut ReplayBuffers,
    from_step: u64,
    start_lr: f64,
    steps: u64,
    batch_size: usize,
    mix: [f64; 3],
) -> CooldownReport {
    let mut report = CooldownReport {
        tag: "cooldown",
        from_step,
        steps: 0,
        start_learning_rate: start_lr,
        samples: 0,
        nonfinite_steps: 0,
        first_loss: None,
        last_loss: None,
    };
    if replay.total() == 0 {
        return report;
    }
    for i in 0..steps {
        let batch: Vec<Example> = replay.sample(batch_size, mix).iter().map(|(_, item)| replay_example(item)).collect();
        if batch.is_empty() {
            break;
        }
        report.samples += batch.len() as u64;
        let step = trainer.step(&[batch], cooldown_lr(start_lr, i, steps));
        report.steps += 1;
        if step.nonfinite {
            report.nonfinite_steps += 1;
        }
        let total = step.losses.iter().find(|(name, _)| *name == "total").map(|(_, l)| *l);
        if report.first_loss.is_none() {
            report.first_loss = total;
        }
        report.last_loss = total.or(report.last_loss);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use unimod_ingest::record::{ObjectSequence, RecordKind, TokenSequence};
    use unimod_model::{Arch, CpuBackend, ModelConfig, SpecialTokens, TrainSettings};

    use crate::train::replay::ReplayItem;
    use crate::train::schedule::Schedule;

    const SPECIAL: SpecialTokens = SpecialTokens { pad: 1, cls: 0, sep: 2, mask: 3, img: 4 };

    fn item(i: u32) -> ReplayItem {
        let rows = 5;
        let dim = 4;
        ReplayItem {
            text: Some(TokenSequence { ids: vec![0, 10 + i % 50, 11 + i % 40, 12, 2], text: format!("t{i}") }),
            image: Some(ObjectSequence {
                dim,
                features: (0..rows * dim).map(|k| ((k as u32 * 7 + i) % 13) as f32 / 13.0).collect(),
                locations: vec![[0.0, 0.0, 1.0, 1.0, 1.0]; rows],
                class_probs: None,
            }),
        }
    }

    /// The lineage is unchanged by a cooldown: a cooldown runs on a copy loaded from the
    /// lineage's state, and the lineage's trainer, step and learning rate stay where they were
    /// (its next step gives the same weights as without the cooldown).
    #[test]
    fn cooldown_changes_a_copy_and_never_the_lineage() {
        let config = ModelConfig::preset(Arch::Unimo, "tiny", 100, 4, SPECIAL).expect("tiny");
        let settings = TrainSettings::default();
        let mut lineage = Trainer::<CpuBackend>::new(config, settings.clone(), Default::default()).expect("trainer");
        let mut replay = ReplayBuffers::new(16, 7);
        for i in 0..16 {
            replay.offer(RecordKind::Pair, item(i));
        }
        let schedule = Schedule::new(1e-3, 10, 0, None);
        let batch = |n: u32| vec![(0..4).map(|i| replay_example(&item(i + n))).collect::<Vec<_>>()];
        for s in 0..3 {
            lineage.step(&batch(s), schedule.lr(s as u64));
        }
        let saved = lineage.save().expect("save");
        let (step, lr) = (lineage.steps_applied(), schedule.lr(lineage.steps_applied()));

        let mut copy = Trainer::<CpuBackend>::load(&saved, settings.clone(), Default::default()).expect("load");
        let report = cool_down(&mut copy, &mut replay, step, lr, 5, 4, [1.0, 1.0, 2.0]);
        assert_eq!(report.steps, 5);
        assert_eq!(report.samples, 20);
        assert_eq!(report.start_learning_rate, lr);
        assert!(report.first_loss.is_some() && report.last_loss.is_some());
        let cooled = copy.save().expect("save cooled");
        assert_ne!(cooled.model, saved.model, "the cooldown trained the copy");

        // The lineage: same step, same learning rate, same weights as before the cooldown.
        assert_eq!(lineage.steps_applied(), step);
        assert_eq!(schedule.lr(lineage.steps_applied()), lr);
        assert_eq!(lineage.save().expect("save").model, saved.model);
    }

    #[test]
    fn no_replay_no_cooldown() {
        let config = ModelConfig::preset(Arch::Unimo, "tiny", 100, 4, SPECIAL).expect("tiny");
        let mut t = Trainer::<CpuBackend>::new(config, TrainSettings::default(), Default::default()).expect("trainer");
        let mut replay = ReplayBuffers::new(4, 1);
        let report = cool_down(&mut t, &mut replay, 9, 1e-4, 10, 4, [1.0, 1.0, 1.0]);
        assert_eq!((report.steps, report.samples, report.from_step), (0, 0, 9));
    }
}
