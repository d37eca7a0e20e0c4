//! Fresh samples waiting for the trainer, one FIFO queue per kind, and the choice of which
//! to train next. Batches follow `train.mix` weights among the kinds that have something
//! queued, so a quiet stream never stalls training. Each queue is FIFO and every partition
//! belongs to one kind, so samples leave in partition order: the trained records of a
//! partition are always a prefix of what was consumed.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::SeedableRng;
use unimod_ingest::record::Sample;

use super::mix::{kind_index as index, weighted_pick};

/// Per-kind FIFO queues with a mixing policy.
#[derive(Debug)]
pub struct Batcher {
    queues: [VecDeque<Sample>; 3],
    weights: [f64; 3],
    rng: StdRng,
}

impl Batcher {
    /// Empty queues with mixing `weights` for (text, image, pair).
    pub fn new(weights: [f64; 3], seed: u64) -> Self {
        Self { queues: Default::default(), weights, rng: StdRng::seed_from_u64(seed) }
    }

    /// Queues a fresh sample.
    pub fn push(&mut self, sample: Sample) {
        self.queues[index(sample.kind)].push_back(sample);
    }

    /// Samples queued in all.
    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `n` samples. Each slot picks a kind in proportion to its weight among
    /// kinds with queued samples; a kind whose weight is 0 is only used when nothing else is
    /// queued (so it still drains and never blocks the stream).
    pub fn take(&mut self, n: usize) -> Vec<Sample> {
        let mut out = Vec::with_capacity(n.min(self.len()));
        while out.len() < n && !self.is_empty() {
            let avail: Vec<usize> = (0..3).filter(|&i| !self.queues[i].is_empty()).collect();
            // A kind whose weight is 0 is drained only when nothing else is queued.
            let pick = weighted_pick(&mut self.rng, &avail, &self.weights).unwrap_or(avail[0]);
            if let Some(s) = self.queues[pick].pop_front() {
                out.push(s);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use unimod_ingest::record::{RecordKind, SourcePos};

    fn sample(kind: RecordKind, offset: i64) -> Sample {
        Sample {
            kind,
            pos: SourcePos::new(Arc::from(kind.as_str()), 0, offset),
            id: None,
            text: None,
            image: None,
        }
    }

    #[test]
    fn keeps_partition_order_and_mixes_by_weight() {
        let mut b = Batcher::new([1.0, 1.0, 2.0], 3);
        for i in 0..400 {
            b.push(sample(RecordKind::Text, i));
            b.push(sample(RecordKind::Image, i));
            b.push(sample(RecordKind::Pair, i));
        }
        let batch = b.take(400);
        assert_eq!(batch.len(), 400);
        let count = |k| batch.iter().filter(|s| s.kind == k).count();
        let pairs = count(RecordKind::Pair);
        assert!((160..=240).contains(&pairs), "pairs {pairs}");
        for kind in RecordKind::ALL {
            let offsets: Vec<i64> = batch.iter().filter(|s| s.kind == kind).map(|s| s.pos.offset).collect();
            assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "FIFO per kind");
            assert_eq!(offsets.first().copied().unwrap_or(0), 0);
        }
    }

    #[test]
    fn a_missing_kind_never_stalls() {
        let mut b = Batcher::new([0.0, 0.0, 1.0], 3);
        for i in 0..5 {
            b.push(sample(RecordKind::Text, i));
        }
        assert_eq!(b.take(10).len(), 5);
        assert!(b.is_empty());
    }
}
