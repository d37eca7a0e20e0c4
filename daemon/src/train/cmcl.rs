//! The stream state behind UNIMO's cross-modal contrastive learning (MODEL.md, objective 4):
//!
//! - hard negatives of a pair: its caption rewritten by the text rewriter (whose substitution
//!   vocabulary is learned from the stream and never exchanges words of the same meaning), and
//!   captions of *other* images close to its caption by TF-IDF, from a bounded window of
//!   recent pair captions;
//! - extra text positives retrieved online from a bounded window of recent text-only records
//!   by TF-IDF cosine (`cmcl.text_min_similarity`).
//!
//! Image positives are retrieved by the trainer itself, inside the step
//! (`unimod_model::memory`): the window of image-only records lives on the device, retrieval
//! compares the pooled embeddings of the step's own forward pass (`cmcl.image_min_similarity`),
//! and the retrieved images are encoded in the same step; no evaluation pass. This module
//! only counts what the step reports ([`CmclData::count_image_positives`]).
//!
//! A caption of the same image (the same features) is never a negative: captions of one image
//! often arrive in a row, and a replayed pair meets its own caption in the window. In-batch
//! duplicates are handled by the model's plan (`unimod_model::positives`).
//!
//! Every item added is counted in `unimod_cmcl_items_total{role}` and every retrieved
//! positive's similarity observed in `unimod_cmcl_positive_similarity{modality}`.

use std::collections::VecDeque;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use unimod_ingest::record::{RecordKind, Sample};
use unimod_ingest::text::{TextRewriter, TextTokenizer, TfIdfWindow};
use unimod_model::positives::image_key;
use unimod_model::{Example, ImageMemorySettings};

use crate::config::CmclConfig;
use crate::telemetry::CmclMetrics;

/// A caption of a pair seen recently (a TF-IDF hard-negative candidate).
struct Caption {
    /// Identity of its image ([`image_key`]).
    image: u64,
    /// The caption, normalised for comparisons.
    text: String,
    /// Its token ids.
    ids: Vec<u32>,
}

/// Rewriter, retrieval windows and their settings.
pub struct CmclData {
    config: CmclConfig,
    tokenizer: Arc<TextTokenizer>,
    rewriter: TextRewriter,
    rng: StdRng,
    metrics: CmclMetrics,
    /// Text-only records (TF-IDF over their texts) and their ids, oldest first; the window's
    /// document id is `first_text + position`.
    texts: TfIdfWindow,
    text_ids: VecDeque<Vec<u32>>,
    first_text: u64,
    /// Pair captions, the same way.
    captions: TfIdfWindow,
    caption_items: VecDeque<Caption>,
    first_caption: u64,
}

/// The trainer's image window for `config` (`cmcl.window` image-only records,
/// `cmcl.image_positives` per pair at cosine `>= cmcl.image_min_similarity`).
pub fn image_memory(config: &CmclConfig) -> ImageMemorySettings {
    ImageMemorySettings {
        capacity: config.window,
        positives: config.image_positives,
        min_similarity: config.image_min_similarity,
    }
}

/// A caption normalised for equality: lowercase words.
fn normalise(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

impl CmclData {
    /// Empty windows.
    pub fn new(config: CmclConfig, tokenizer: Arc<TextTokenizer>, seed: u64, metrics: CmclMetrics) -> Self {
        let window = config.window.max(1);
        Self {
            texts: TfIdfWindow::new(window),
            captions: TfIdfWindow::new(window),
            config,
            tokenizer,
            rewriter: TextRewriter::default(),
            rng: StdRng::seed_from_u64(seed),
            metrics,
            text_ids: VecDeque::new(),
            first_text: 0,
            caption_items: VecDeque::new(),
            first_caption: 0,
        }
    }

    /// Items held in the text and caption windows.
    pub fn window_sizes(&self) -> (usize, usize) {
        (self.text_ids.len(), self.caption_items.len())
    }

    /// Counts the image positives an applied step retrieved from the trainer's window, with
    /// their similarities ([`unimod_model::StepReport::image_positives`]).
    pub fn count_image_positives(&self, similarities: &[f32]) {
        self.metrics.items.with_label_values(&["image_positive"]).inc_by(similarities.len() as u64);
        let histogram = self.metrics.positive_similarity.with_label_values(&["image"]);
        for &s in similarities {
            histogram.observe(f64::from(s));
        }
    }

    /// Adds hard negatives and retrieved text positives to the pairs among `examples`;
    /// `captions[i]` is the text of example `i` (when it has one). Called once per step.
    pub fn enrich(&mut self, examples: &mut [Example], captions: &[Option<&str>]) {
        let pairs: Vec<usize> = (0..examples.len())
            .filter(|&i| examples[i].text.is_some() && examples[i].image.is_some())
            .collect();
        if pairs.is_empty() {
            return;
        }
        let keys: Vec<u64> = pairs
            .iter()
            .map(|&i| examples[i].image.as_ref().map_or(0, |im| image_key(&im.features)))
            .collect();
        let normalised: Vec<Option<String>> =
            pairs.iter().map(|&i| captions.get(i).copied().flatten().map(normalise)).collect();
        for (n, &i) in pairs.iter().enumerate() {
            let Some(caption) = captions.get(i).copied().flatten() else { continue };
            // Every caption known for this image: in this batch and in the window.
            let own: Vec<&str> = (0..pairs.len())
                .filter(|&m| keys[m] == keys[n])
                .filter_map(|m| normalised[m].as_deref())
                .chain(self.caption_items.iter().filter(|c| c.image == keys[n]).map(|c| c.text.as_str()))
                .collect();
            let seed = self.rng.random::<u64>();
            let mut negatives = 0u64;
            for rewrite in self.rewriter.rewrites(caption, self.config.hard_negatives, seed) {
                if own.contains(&normalise(&rewrite.text).as_str()) {
                    continue;
                }
                if let Ok(seq) = self.tokenizer.encode(&rewrite.text) {
                    examples[i].hard_negatives.push(seq.ids);
                    negatives += 1;
                }
            }
            self.metrics.items.with_label_values(&["rewrite_negative"]).inc_by(negatives);
            if self.config.tfidf_negatives > 0 {
                // Closest captions of other images; a few extra hits leave room for skips.
                let want = self.config.tfidf_negatives;
                let mut taken = 0;
                for (id, _score) in self.captions.query(caption, want + 8) {
                    if taken >= want {
                        break;
                    }
                    let Some(c) = id.checked_sub(self.first_caption).and_then(|k| self.caption_items.get(k as usize)) else {
                        continue;
                    };
                    if c.image == keys[n] || own.contains(&c.text.as_str()) {
                        continue;
                    }
                    examples[i].hard_negatives.push(c.ids.clone());
                    taken += 1;
                }
                self.metrics.items.with_label_values(&["tfidf_negative"]).inc_by(taken as u64);
            }
            if self.config.text_positives > 0 {
                for (id, score) in self.texts.query(caption, self.config.text_positives) {
                    if score < self.config.text_min_similarity {
                        continue;
                    }
                    if let Some(ids) = id.checked_sub(self.first_text).and_then(|k| self.text_ids.get(k as usize)) {
                        examples[i].extra_texts.push(ids.clone());
                        self.metrics.items.with_label_values(&["text_positive"]).inc();
                        self.metrics.positive_similarity.with_label_values(&["text"]).observe(f64::from(score));
                    }
                }
            }
        }
    }

    /// Learns from the fresh samples of a step: the rewriter's vocabulary from every text,
    /// the caption window from pairs, the text window from text-only records.
    pub fn observe(&mut self, samples: &[Sample]) {
        let window = self.config.window.max(1);
        for s in samples {
            if let Some(t) = &s.text {
                self.rewriter.observe(&t.text);
            }
            match s.kind {
                RecordKind::Text => {
                    if let Some(t) = &s.text {
                        let id = self.first_text + self.text_ids.len() as u64;
                        self.texts.add(id, &t.text);
                        if self.text_ids.len() >= window {
                            self.text_ids.pop_front();
                            self.first_text += 1;
                        }
                        self.text_ids.push_back(t.ids.clone());
                    }
                }
                RecordKind::Pair if self.config.tfidf_negatives > 0 => {
                    if let (Some(t), Some(o)) = (&s.text, &s.image) {
                        let id = self.first_caption + self.caption_items.len() as u64;
                        self.captions.add(id, &t.text);
                        if self.caption_items.len() >= window {
                            self.caption_items.pop_front();
                            self.first_caption += 1;
                        }
                        self.caption_items.push_back(Caption {
                            image: image_key(&o.features),
                            text: normalise(&t.text),
                            ids: t.ids.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unimod_ingest::config::TextConfig;
    use unimod_ingest::record::{ObjectSequence, SourcePos};

    use crate::train::examples::sample_example;

    const A1: &str = "a large red circle left of a small blue square";
    const A2: &str = "an image of a small blue square right of a large red circle";
    const B: &str = "a large red circle left of a small green square";
    const TEXT: &str = "here is a large red circle left of a small blue square.";

    fn image(seed: f32) -> ObjectSequence {
        ObjectSequence {
            dim: 4,
            features: (0..12).map(|i| seed + i as f32 * 0.1).collect(),
            locations: vec![[0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0, 0.5], [0.5, 0.0, 1.0, 1.0, 0.5]],
            class_probs: None,
        }
    }

    fn sample(tok: &TextTokenizer, kind: RecordKind, text: Option<&str>, img: Option<f32>) -> Sample {
        Sample {
            kind,
            pos: SourcePos::new(Arc::from("t"), 0, 0),
            id: None,
            text: text.map(|t| tok.encode(t).expect("encodes")),
            image: img.map(image),
        }
    }

    fn count(m: &CmclMetrics, role: &str) -> u64 {
        m.items.with_label_values(&[role]).get()
    }

    /// Negatives come from other images only (never another caption of the same image, nor a
    /// replayed copy's own caption), text positives are retrieved, image positives (retrieved
    /// by the trainer) are left to it, and every role is counted.
    #[test]
    fn negatives_from_other_images_positives_retrieved_and_counted() {
        let text_config = TextConfig { vocab_size: 300, min_frequency: 1, ..TextConfig::default() };
        let tok = Arc::new(TextTokenizer::train([A1, A2, B, TEXT], &text_config).expect("tokenizer"));
        let config = CmclConfig {
            hard_negatives: 1,
            tfidf_negatives: 2,
            text_min_similarity: 0.5,
            image_min_similarity: -1.0,
            ..CmclConfig::default()
        };
        let metrics = CmclMetrics::new().expect("metrics");
        let mut cmcl = CmclData::new(config, Arc::clone(&tok), 1, metrics.clone());
        // A step earlier: image A with caption A1, image B with caption B, a text, an image.
        let seen = vec![
            sample(&tok, RecordKind::Pair, Some(A1), Some(0.0)),
            sample(&tok, RecordKind::Pair, Some(B), Some(5.0)),
            sample(&tok, RecordKind::Text, Some(TEXT), None),
            sample(&tok, RecordKind::Image, None, Some(9.0)),
        ];
        cmcl.observe(&seen);
        assert_eq!(cmcl.window_sizes(), (1, 2));

        // Now image A arrives with its other caption A2, and a replayed copy of (A, A1).
        let batch = [sample(&tok, RecordKind::Pair, Some(A2), Some(0.0)), sample(&tok, RecordKind::Pair, Some(A1), Some(0.0))];
        let mut examples: Vec<Example> = batch.iter().map(sample_example).collect();
        cmcl.enrich(&mut examples, &[Some(A2), Some(A1)]);
        let ids = |t: &str| tok.encode(t).expect("encodes").ids;
        for e in &examples {
            assert!(!e.hard_negatives.contains(&ids(A1)), "a caption of the same image as a negative");
            assert!(!e.hard_negatives.contains(&ids(A2)), "a caption of the same image as a negative");
            assert!(e.hard_negatives.contains(&ids(B)), "the close caption of another image is a negative");
            assert_eq!(e.extra_texts, vec![ids(TEXT)]);
            assert!(e.extra_images.is_empty(), "image positives are the trainer's");
        }
        assert_eq!(count(&metrics, "tfidf_negative"), 2, "one per pair: B (A1 is the same image)");
        assert!(count(&metrics, "rewrite_negative") >= 1);
        assert_eq!(count(&metrics, "text_positive"), 2);
        assert_eq!(count(&metrics, "image_positive"), 0);
        cmcl.count_image_positives(&[0.95, 0.97]);
        assert_eq!(count(&metrics, "image_positive"), 2);
        assert_eq!(metrics.positive_similarity.with_label_values(&["image"]).get_sample_count(), 2);
        assert_eq!(metrics.positive_similarity.with_label_values(&["text"]).get_sample_count(), 2);
    }
}
