//! A bounded window of recent texts with TF-IDF retrieval, for CMCL's extra positives (text
//! records similar to a pair's caption) and TF-IDF hard negatives (captions of other images
//! close to this one).
//!
//! The window holds at most `capacity` documents; adding one more evicts the oldest. Document
//! frequencies are kept incrementally and an inverted index limits a query to the documents
//! sharing a term with it. Scores are cosine similarities of `tf * idf` vectors with
//! `idf = ln((1 + N) / (1 + df)) + 1`.

use std::collections::{HashMap, VecDeque};

use super::words::content_words;

struct Doc {
    id: u64,
    /// Term and count, one entry per distinct term.
    terms: Vec<(String, u32)>,
}

/// A bounded TF-IDF index over the most recent documents.
pub struct TfIdfWindow {
    capacity: usize,
    docs: VecDeque<Doc>,
    /// Sequence number of `docs[0]` (documents are addressed by sequence number internally, so
    /// producers' ids may repeat).
    first_seq: u64,
    /// Term -> sequence numbers of the documents containing it (ascending).
    postings: HashMap<String, VecDeque<u64>>,
}

impl std::fmt::Debug for TfIdfWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TfIdfWindow").field("capacity", &self.capacity).field("len", &self.docs.len()).finish()
    }
}

fn term_counts(text: &str) -> Vec<(String, u32)> {
    let mut counts: HashMap<String, u32> = HashMap::new();
    for w in content_words(text) {
        *counts.entry(w).or_default() += 1;
    }
    let mut terms: Vec<(String, u32)> = counts.into_iter().collect();
    terms.sort_unstable();
    terms
}

impl TfIdfWindow {
    /// A window of at most `capacity` documents (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), docs: VecDeque::new(), first_seq: 0, postings: HashMap::new() }
    }

    /// Number of documents held.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// True when no document is held.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Adds a document, evicting the oldest when the window is full. Texts without content
    /// words are held too (they just never match).
    pub fn add(&mut self, id: u64, text: &str) {
        if self.docs.len() == self.capacity {
            self.evict_oldest();
        }
        let seq = self.first_seq + self.docs.len() as u64;
        let terms = term_counts(text);
        for (term, _) in &terms {
            self.postings.entry(term.clone()).or_default().push_back(seq);
        }
        self.docs.push_back(Doc { id, terms });
    }

    fn evict_oldest(&mut self) {
        let Some(doc) = self.docs.pop_front() else { return };
        let seq = self.first_seq;
        self.first_seq += 1;
        for (term, _) in doc.terms {
            if let Some(list) = self.postings.get_mut(&term) {
                // The oldest document is always at the front of its postings.
                if list.front() == Some(&seq) {
                    list.pop_front();
                }
                if list.is_empty() {
                    self.postings.remove(&term);
                }
            }
        }
    }

    fn idf(&self, term: &str) -> f32 {
        let df = self.postings.get(term).map_or(0, VecDeque::len) as f32;
        ((1.0 + self.docs.len() as f32) / (1.0 + df)).ln() + 1.0
    }

    /// The `k` documents most similar to `text`, as `(id, cosine score)`, best first; only
    /// documents sharing at least one content word are returned. Ties keep the newer document
    /// first.
    pub fn query(&self, text: &str, k: usize) -> Vec<(u64, f32)> {
        if k == 0 || self.docs.is_empty() {
            return Vec::new();
        }
        let query: Vec<(String, f32)> = term_counts(text)
            .into_iter()
            .map(|(t, c)| {
                let w = c as f32 * self.idf(&t);
                (t, w)
            })
            .collect();
        let query_norm = query.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
        if query_norm == 0.0 {
            return Vec::new();
        }
        let mut dots: HashMap<u64, f32> = HashMap::new();
        for (term, qw) in &query {
            if let Some(list) = self.postings.get(term) {
                let idf = self.idf(term);
                for &seq in list {
                    let doc = &self.docs[(seq - self.first_seq) as usize];
                    let count = doc
                        .terms
                        .binary_search_by(|(t, _)| t.as_str().cmp(term))
                        .map_or(0, |i| doc.terms[i].1);
                    *dots.entry(seq).or_default() += qw * count as f32 * idf;
                }
            }
        }
        let mut scored: Vec<(u64, u64, f32)> = dots
            .into_iter()
            .map(|(seq, dot)| {
                let doc = &self.docs[(seq - self.first_seq) as usize];
                let norm = doc.terms.iter().map(|(t, c)| (*c as f32 * self.idf(t)).powi(2)).sum::<f32>().sqrt();
                (seq, doc.id, dot / (norm * query_norm).max(f32::MIN_POSITIVE))
            })
            .collect();
        scored.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.0.cmp(&a.0)));
        scored.into_iter().take(k).map(|(_, id, s)| (id, s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_closest_documents() {
        let mut window = TfIdfWindow::new(10);
        window.add(1, "a red car parked on the street");
        window.add(2, "a dog running on the beach");
        window.add(3, "a red bus on the street");
        window.add(4, "the the the");
        let hits = window.query("red car in the street", 5);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!(hits[0].1 > hits[1].1 && hits[1].1 > 0.0 && hits[0].1 <= 1.0 + 1e-5);
        let exact = window.query("a dog running on the beach", 1);
        assert_eq!(exact[0].0, 2);
        assert!((exact[0].1 - 1.0).abs() < 1e-5);
        assert!(window.query("unrelated words", 3).is_empty());
        assert!(window.query("red", 0).is_empty());
    }

    #[test]
    fn evicts_the_oldest_and_stays_bounded() {
        let mut window = TfIdfWindow::new(3);
        for i in 0..10u64 {
            window.add(i, &format!("word{i} shared"));
        }
        assert_eq!(window.len(), 3);
        assert!(window.query("word2", 5).is_empty(), "evicted");
        assert_eq!(window.query("word9", 5)[0].0, 9);
        let ids: Vec<u64> = window.query("shared", 10).iter().map(|h| h.0).collect();
        assert_eq!(ids, vec![9, 8, 7]);
        // Postings of evicted documents are gone.
        assert_eq!(window.postings.len(), 4);
    }
}
