//! The stream state behind UNIMO's cross-modal contrastive learning: hard-negative captions
//! from the text rewriter (whose substitution vocabulary is learned from the stream), and
//! extra positives retrieved online from a bounded window of recent single-modal items —
//! text-only records by TF-IDF, image-only records by pooled-embedding similarity.

use std::collections::VecDeque;
use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use unimod_ingest::record::{RecordKind, Sample};
use unimod_ingest::text::{TextRewriter, TextTokenizer, TfIdfWindow};
use unimod_model::{cosine_top_k, Example, Trainer, VisualInput};

use super::examples::visual_input;
use crate::config::CmclConfig;

/// Rewriter, retrieval windows and their settings.
pub struct CmclData {
    config: CmclConfig,
    tokenizer: Arc<TextTokenizer>,
    rewriter: TextRewriter,
    rng: StdRng,
    texts: TfIdfWindow,
    /// Token ids of the documents in `texts`, oldest first (same capacity).
    text_ids: VecDeque<(u64, Vec<u32>)>,
    next_text_id: u64,
    images: VecDeque<(VisualInput, Vec<f32>)>,
}

impl CmclData {
    /// Empty windows.
    pub fn new(config: CmclConfig, tokenizer: Arc<TextTokenizer>, seed: u64) -> Self {
        Self {
            texts: TfIdfWindow::new(config.window.max(1)),
            config,
            tokenizer,
            rewriter: TextRewriter::default(),
            rng: StdRng::seed_from_u64(seed),
            text_ids: VecDeque::new(),
            next_text_id: 0,
            images: VecDeque::new(),
        }
    }

    /// Adds hard negatives and retrieved positives to the pairs among `examples`;
    /// `captions[i]` is the text of example `i` (when it has one).
    pub fn enrich<B: AutodiffBackend>(&mut self, trainer: &Trainer<B>, examples: &mut [Example], captions: &[Option<&str>]) {
        let pairs: Vec<usize> = (0..examples.len())
            .filter(|&i| examples[i].text.is_some() && examples[i].image.is_some())
            .collect();
        if pairs.is_empty() {
            return;
        }
        for &i in &pairs {
            let Some(caption) = captions.get(i).copied().flatten() else { continue };
            let seed = self.rng.random::<u64>();
            for rewrite in self.rewriter.rewrites(caption, self.config.hard_negatives, seed) {
                if let Ok(seq) = self.tokenizer.encode(&rewrite.text) {
                    examples[i].hard_negatives.push(seq.ids);
                }
            }
            if self.config.text_positives > 0 {
                for (id, score) in self.texts.query(caption, self.config.text_positives) {
                    if score >= self.config.min_similarity {
                        if let Some((_, ids)) = self.text_ids.iter().find(|(d, _)| *d == id) {
                            examples[i].extra_texts.push(ids.clone());
                        }
                    }
                }
            }
        }
        if self.config.image_positives > 0 && !self.images.is_empty() {
            let queries: Vec<VisualInput> =
                pairs.iter().filter_map(|&i| examples[i].image.clone()).collect();
            let embedded = trainer.embed_images(&queries);
            let window: Vec<Vec<f32>> = self.images.iter().map(|(_, e)| e.clone()).collect();
            for (&i, q) in pairs.iter().zip(&embedded) {
                for (j, score) in cosine_top_k(q, &window, self.config.image_positives) {
                    if score >= self.config.min_similarity {
                        examples[i].extra_images.push(self.images[j].0.clone());
                    }
                }
            }
        }
    }

    /// Learns from the fresh samples of a step: the rewriter's vocabulary from every text,
    /// the text window from text-only records, the image window from image-only records.
    pub fn observe<B: AutodiffBackend>(&mut self, trainer: &Trainer<B>, samples: &[Sample]) {
        let mut new_images = Vec::new();
        for s in samples {
            if let Some(t) = &s.text {
                self.rewriter.observe(&t.text);
            }
            match s.kind {
                RecordKind::Text => {
                    if let Some(t) = &s.text {
                        let id = self.next_text_id;
                        self.next_text_id += 1;
                        self.texts.add(id, &t.text);
                        if self.text_ids.len() >= self.config.window.max(1) {
                            self.text_ids.pop_front();
                        }
                        self.text_ids.push_back((id, t.ids.clone()));
                    }
                }
                RecordKind::Image if self.config.image_positives > 0 => {
                    if let Some(o) = &s.image {
                        new_images.push(visual_input(o));
                    }
                }
                _ => {}
            }
        }
        if new_images.is_empty() {
            return;
        }
        let embedded = trainer.embed_images(&new_images);
        for item in new_images.into_iter().zip(embedded) {
            if self.images.len() >= self.config.window.max(1) {
                self.images.pop_front();
            }
            self.images.push_back(item);
        }
    }
}
