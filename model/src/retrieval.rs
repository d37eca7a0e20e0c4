//! Nearest neighbours by cosine similarity, for online retrieval of extra CMCL positives
//! and for retrieval evaluation.

/// The `k` items most similar to `query` by cosine similarity, best first, as
/// `(index, similarity)`. Items of another length than the query, or zero vectors, score
/// as least similar; NaN similarities are skipped. Ties keep the lower index first.
pub fn cosine_top_k(query: &[f32], items: &[Vec<f32>], k: usize) -> Vec<(usize, f32)> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let qn = norm(query);
    if k == 0 || qn == 0.0 {
        return Vec::new();
    }
    let mut scored: Vec<(usize, f32)> = items
        .iter()
        .enumerate()
        .filter(|(_, v)| v.len() == query.len())
        .filter_map(|(i, v)| {
            let n = norm(v);
            if n == 0.0 {
                return None;
            }
            let dot: f32 = query.iter().zip(v).map(|(a, b)| a * b).sum();
            let s = dot / (qn * n);
            (!s.is_nan()).then_some((i, s))
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_cosine() {
        let items = vec![vec![0.0, 1.0], vec![1.0, 0.1], vec![-1.0, 0.0], vec![2.0, 0.0], vec![1.0]];
        let top = cosine_top_k(&[1.0, 0.0], &items, 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![3, 1]);
        assert!((top[0].1 - 1.0).abs() < 1e-6);
        assert_eq!(cosine_top_k(&[1.0, 0.0], &items, 10).len(), 4);
        assert!(cosine_top_k(&[0.0, 0.0], &items, 3).is_empty());
    }
}
