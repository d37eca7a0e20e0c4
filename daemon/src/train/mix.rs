//! The mixing rule shared by fresh batches and replay: per-kind tables indexed by kind, and
//! a draw of one kind in proportion to configured weights among the kinds that have items.

use rand::Rng;
use unimod_ingest::record::RecordKind;

/// Index of `kind` in per-kind tables (the order of [`RecordKind::ALL`]).
pub fn kind_index(kind: RecordKind) -> usize {
    match kind {
        RecordKind::Text => 0,
        RecordKind::Image => 1,
        RecordKind::Pair => 2,
    }
}

/// Draws one of `candidates` (kind indices) with probability proportional to its weight;
/// candidates with weight 0 are never drawn. `None` when no candidate has a positive weight.
pub fn weighted_pick(rng: &mut impl Rng, candidates: &[usize], weights: &[f64; 3]) -> Option<usize> {
    let positive: Vec<usize> = candidates.iter().copied().filter(|&i| weights[i] > 0.0).collect();
    let total: f64 = positive.iter().map(|&i| weights[i]).sum();
    let last = *positive.last()?;
    let mut x = rng.random::<f64>() * total;
    for &i in &positive {
        if x < weights[i] {
            return Some(i);
        }
        x -= weights[i];
    }
    Some(last)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn draws_in_proportion_and_never_zero_weights() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut hits = [0usize; 3];
        for _ in 0..4000 {
            hits[weighted_pick(&mut rng, &[0, 1, 2], &[1.0, 0.0, 3.0]).expect("a pick")] += 1;
        }
        assert_eq!(hits[1], 0);
        assert!((850..=1150).contains(&hits[0]), "{hits:?}");
        assert_eq!(weighted_pick(&mut rng, &[1], &[1.0, 0.0, 3.0]), None);
        assert_eq!(weighted_pick(&mut rng, &[], &[1.0, 1.0, 1.0]), None);
    }
}
