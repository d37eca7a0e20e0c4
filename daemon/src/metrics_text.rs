//! Caption metrics, from their definitions:
//!
//! - corpus BLEU-4 (Papineni et al., 2002): modified (clipped) n-gram precisions p1..p4 summed
//!   over the corpus, geometric mean with uniform weights, times the brevity penalty
//!   `BP = 1` if `c > r` else `exp(1 - r / c)` (c = candidate words, r = the closest
//!   reference length of each candidate, summed); no smoothing, so a corpus without a
//!   matching 4-gram scores 0;
//! - CIDEr-D (Vedantam et al., 2015, the variant of the COCO evaluation server): per n = 1..4,
//!   TF-IDF vectors of n-gram counts with the document frequency taken over the images'
//!   reference sets, the candidate's counts clipped to the reference's
//!   (`sum min(g_c, g_r) * g_r`), divided by the norms, times the length penalty
//!   `exp(-(l_c - l_r)^2 / (2 * 6^2))`; averaged over n and the references, times 10; the
//!   corpus score is the mean over images.
//!
//! Both tokenise the same way: lower case, every character that is not a letter, a digit or
//! an apostrophe separates words (the COCO tokenizer drops punctuation).

use std::collections::{HashMap, HashSet};

/// Words of a caption for scoring.
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

type Ngram = Vec<String>;

/// Counts of the n-grams of sizes 1..=4.
fn ngram_counts(words: &[String]) -> HashMap<Ngram, usize> {
    let mut out = HashMap::new();
    for n in 1..=4 {
        for w in words.windows(n) {
            *out.entry(w.to_vec()).or_insert(0) += 1;
        }
    }
    out
}

/// Corpus BLEU-4 of `candidates[i]` against `references[i]` (one or more each), in [0, 1].
pub fn bleu4(candidates: &[String], references: &[Vec<String>]) -> f64 {
    let mut matched = [0usize; 4];
    let mut total = [0usize; 4];
    let (mut c_len, mut r_len) = (0usize, 0usize);
    for (cand, refs) in candidates.iter().zip(references) {
        let c = words(cand);
        let refs: Vec<Vec<String>> = refs.iter().map(|r| words(r)).collect();
        c_len += c.len();
        // Effective reference length: the closest to the candidate (shorter on ties).
        r_len += refs
            .iter()
            .map(Vec::len)
            .min_by_key(|&l| (l.abs_diff(c.len()), l))
            .unwrap_or(0);
        let cand_counts = ngram_counts(&c);
        let mut max_ref: HashMap<&Ngram, usize> = HashMap::new();
        let ref_counts: Vec<HashMap<Ngram, usize>> = refs.iter().map(|r| ngram_counts(r)).collect();
        for counts in &ref_counts {
            for (g, &k) in counts {
                let e = max_ref.entry(g).or_insert(0);
                *e = (*e).max(k);
            }
        }
        for (g, &k) in &cand_counts {
            let n = g.len() - 1;
            total[n] += k;
            matched[n] += k.min(max_ref.get(g).copied().unwrap_or(0));
        }
    }
    if c_len == 0 || matched.contains(&0) {
        return 0.0;
    }
    let log_p: f64 = (0..4).map(|n| (matched[n] as f64 / total[n] as f64).ln()).sum::<f64>() / 4.0;
    let bp = if c_len > r_len { 1.0 } else { (1.0 - r_len as f64 / c_len as f64).exp() };
    bp * log_p.exp()
}

/// CIDEr-D's Gaussian length penalty width.
const SIGMA: f64 = 6.0;

struct Vectors {
    /// Per n (index n - 1): n-gram -> tf * idf.
    vec: [HashMap<Ngram, f64>; 4],
    norm: [f64; 4],
    len: usize,
}

fn tfidf(words: &[String], df: &HashMap<Ngram, usize>, log_images: f64) -> Vectors {
    let mut vec: [HashMap<Ngram, f64>; 4] = Default::default();
    let mut norm = [0.0; 4];
    for (g, k) in ngram_counts(words) {
        let n = g.len() - 1;
        let idf = log_images - (df.get(&g).copied().unwrap_or(0).max(1) as f64).ln();
        let v = k as f64 * idf;
        norm[n] += v * v;
        vec[n].insert(g, v);
    }
    Vectors { vec, norm: norm.map(f64::sqrt), len: words.len() }
}

/// Corpus CIDEr-D of `candidates[i]` against `references[i]`.
pub fn cider_d(candidates: &[String], references: &[Vec<String>]) -> f64 {
    let images = candidates.len().min(references.len());
    if images == 0 {
        return 0.0;
    }
    let refs: Vec<Vec<Vec<String>>> = references[..images]
        .iter()
        .map(|rs| rs.iter().map(|r| words(r)).collect())
        .collect();
    let mut df: HashMap<Ngram, usize> = HashMap::new();
    for rs in &refs {
        let grams: HashSet<Ngram> = rs.iter().flat_map(|r| ngram_counts(r).into_keys()).collect();
        for g in grams {
            *df.entry(g).or_insert(0) += 1;
        }
    }
    let log_images = (images as f64).ln();
    let mut sum = 0.0;
    for (cand, rs) in candidates.iter().zip(&refs) {
        if rs.is_empty() {
            continue;
        }
        let c = tfidf(&words(cand), &df, log_images);
        let mut score = 0.0;
        for r in rs {
            let r = tfidf(r, &df, log_images);
            let delta = c.len as f64 - r.len as f64;
            let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
            for n in 0..4 {
                let mut val: f64 = c.vec[n]
                    .iter()
                    .map(|(g, &v)| {
                        let rv = r.vec[n].get(g).copied().unwrap_or(0.0);
                        v.min(rv) * rv
                    })
                    .sum();
                if c.norm[n] != 0.0 && r.norm[n] != 0.0 {
                    val /= c.norm[n] * r.norm[n];
                }
                score += val * penalty;
            }
        }
        sum += score / 4.0 / rs.len() as f64 * 10.0;
    }
    sum / images as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn refs(v: &[&str]) -> Vec<Vec<String>> {
        v.iter().map(|x| vec![x.to_string()]).collect()
    }

    #[test]
    fn tokenisation_drops_case_and_punctuation() {
        assert_eq!(words("A red Circle, left of a blue square."), s(&["a", "red", "circle", "left", "of", "a", "blue", "square"]));
    }

    #[test]
    fn bleu_hand_computed() {
        // Identical: every precision 1, no brevity penalty.
        assert!((bleu4(&s(&["the cat sat on the mat"]), &refs(&["The cat sat on the mat."])) - 1.0).abs() < 1e-12);
        // p1..p4 = 4/5, 3/4, 2/3, 1/2; c = r = 5: BLEU = (0.2)^(1/4).
        let b = bleu4(&s(&["a b c d e"]), &refs(&["a b c d f"]));
        assert!((b - 0.2f64.powf(0.25)).abs() < 1e-12, "{b}");
        // All precisions 1 but c = 4 < r = 6: BP = exp(1 - 6/4).
        let b = bleu4(&s(&["a b c d"]), &refs(&["a b c d e f"]));
        assert!((b - (-0.5f64).exp()).abs() < 1e-12, "{b}");
        // Clipping: "the" counts at most as often as in the reference; no bigram matches.
        assert_eq!(bleu4(&s(&["the the the the"]), &refs(&["the cat"])), 0.0);
        // Corpus level: precisions are summed before dividing:
        // p = 8/9, 6/7, 4/5, 2/3, c = r = 9.
        let b = bleu4(&s(&["a b c d e", "a b c d"]), &refs(&["a b c d f", "a b c d"]));
        let expect = (8.0 / 9.0 * 6.0 / 7.0 * 4.0 / 5.0 * 2.0 / 3.0f64).powf(0.25);
        assert!((b - expect).abs() < 1e-12, "{b} vs {expect}");
        // The closest reference length counts for the brevity penalty.
        let b = bleu4(&s(&["a b c d"]), &[s(&["a b c d e f g h", "a b c d x"])]);
        assert!((b - (1.0f64 - 5.0 / 4.0).exp()).abs() < 1e-12, "{b}");
    }

    #[test]
    fn cider_hand_computed() {
        // Two images, each caption its own two-word reference: n = 1, 2 have cosine 1 and
        // n = 3, 4 have no n-grams (0): mean 0.5, times 10.
        let c = cider_d(&s(&["a b", "c d"]), &refs(&["a b", "c d"]));
        assert!((c - 5.0).abs() < 1e-12, "{c}");
        // Image 1 says "a c" for "a b": unigrams a, b, c all have idf ln 2, so the clipped
        // product is (ln 2)^2 over norms sqrt(2) ln 2 each -> 1/2; no bigram matches:
        // (0.5 + 0 + 0 + 0) / 4 * 10 = 1.25; image 2 scores 5; mean 3.125.
        let c = cider_d(&s(&["a c", "c d"]), &refs(&["a b", "c d"]));
        assert!((c - 3.125).abs() < 1e-12, "{c}");
        // A word in every image's references has idf 0 and adds nothing; "b" alone still
        // matches fully: scores stay 5.
        let c = cider_d(&s(&["a b", "a c"]), &refs(&["a b", "a c"]));
        assert!((c - 5.0).abs() < 1e-12, "{c}");
        // Length penalty: image 1's candidate "a b b" (3 words) against "a b" (2 words).
        // Unigram vectors (idf ln 2): cand a = ln2, b = 2 ln2; ref a = ln2, b = ln2.
        // Clipped: min(ln2, ln2) ln2 + min(2ln2, ln2) ln2 = 2 (ln2)^2; norms sqrt(5) ln2 and
        // sqrt(2) ln2 -> 2 / sqrt(10). Bigrams: cand "a b" = ln2, "b b" = ln2; ref "a b" = ln2:
        // (ln2)^2 / (sqrt(2) ln2 * ln2) = 1 / sqrt(2). Trigram "a b b" has no match.
        // Penalty exp(-1 / 72). Score = (2/sqrt(10) + 1/sqrt(2)) / 4 * 10 * exp(-1/72).
        let c = cider_d(&s(&["a b b", "c d"]), &refs(&["a b", "c d"]));
        let first = (2.0 / 10f64.sqrt() + 1.0 / 2f64.sqrt()) / 4.0 * 10.0 * (-1.0f64 / 72.0).exp();
        assert!((c - (first + 5.0) / 2.0).abs() < 1e-12, "{c} vs {}", (first + 5.0) / 2.0);
        // One image: idf is log(1) - log(1) = 0 for everything: CIDEr-D is 0 by definition.
        assert_eq!(cider_d(&s(&["a b"]), &refs(&["a b"])), 0.0);
    }
}
