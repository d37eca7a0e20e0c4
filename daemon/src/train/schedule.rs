//! Learning-rate schedule for an endless run: linear warmup from 0 to the peak over
//! `warmup_steps` at the start of the lineage, then constant; after a resume, an optional
//! rewarm over `rewarm_steps` (the minimum of both factors applies).
//!
//! A cooldown ([`cooldown_lr`]) is never part of this schedule: it runs on a copy of the
//! weights (`unimod checkpoint export --cooldown`, see `train::cooldown`), so the lineage's
//! steps and learning rates are the same whether or not snapshots were cooled down.

/// Learning rate as a function of the optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    peak: f64,
    warmup_steps: u64,
    rewarm_steps: u64,
    resumed_at: Option<u64>,
}

impl Schedule {
    /// A schedule starting at step 0 (or resumed at `resumed_at`).
    pub fn new(peak: f64, warmup_steps: u64, rewarm_steps: u64, resumed_at: Option<u64>) -> Self {
        Self { peak, warmup_steps, rewarm_steps, resumed_at }
    }

    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        let warm = ramp(step, self.warmup_steps);
        let rewarm = match self.resumed_at {
            Some(start) if self.rewarm_steps > 0 && step >= start => ramp(step - start, self.rewarm_steps),
            _ => 1.0,
        };
        self.peak * warm.min(rewarm)
    }
}

/// The learning rate of cooldown step `i` (0-based) of `steps`, starting from `start`: a
/// linear anneal `start * (steps - i) / steps`, which reaches 0 just after the last step.
pub fn cooldown_lr(start: f64, i: u64, steps: u64) -> f64 {
    if steps == 0 || i >= steps {
        0.0
    } else {
        start * (steps - i) as f64 / steps as f64
    }
}

fn ramp(step: u64, over: u64) -> f64 {
    if over == 0 {
        1.0
    } else {
        ((step + 1) as f64 / over as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_stays_constant() {
        let s = Schedule::new(1e-3, 10, 0, None);
        assert!((s.lr(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr(4) - 5e-4).abs() < 1e-12);
        assert_eq!(s.lr(9), 1e-3);
        assert_eq!(s.lr(1_000_000), 1e-3);
    }

    #[test]
    fn rewarms_after_resume() {
        let s = Schedule::new(1.0, 10, 4, Some(100));
        assert_eq!(s.lr(99), 1.0);
        assert!((s.lr(100) - 0.25).abs() < 1e-12);
        assert!((s.lr(101) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(103), 1.0);
        // Without rewarm, a resume continues at the peak.
        assert_eq!(Schedule::new(1.0, 10, 0, Some(100)).lr(100), 1.0);
    }

    #[test]
    fn cooldown_anneals_linearly_to_zero() {
        assert_eq!(cooldown_lr(1.0, 0, 4), 1.0);
        assert_eq!(cooldown_lr(1.0, 1, 4), 0.75);
        assert_eq!(cooldown_lr(1.0, 3, 4), 0.25);
        assert_eq!(cooldown_lr(1.0, 4, 4), 0.0);
        assert_eq!(cooldown_lr(1.0, 0, 0), 0.0);
        let lrs: Vec<f64> = (0..10).map(|i| cooldown_lr(2e-4, i, 10)).collect();
        assert!(lrs.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn zero_warmup_starts_at_peak() {
        assert_eq!(Schedule::new(0.5, 0, 0, None).lr(0), 0.5);
    }
}
