//! Input embeddings: text (word + learned position, RoBERTa positions starting at 2) and
//! visual (`Linear(feature) + Linear(location)`), each followed by LayerNorm and dropout.

use burn::module::{Initializer, Module};
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;

use super::init;

/// First position id of a text (RoBERTa convention: ids 0 and 1 are reserved).
pub const POSITION_OFFSET: usize = 2;

/// Word and position embeddings of a text stream.
#[derive(Module, Debug)]
pub struct TextEmbedding<B: Backend> {
    /// Word embeddings, `[vocab, hidden]`; also the tied output matrix of MLM.
    pub word: Embedding<B>,
    position: Embedding<B>,
    norm: LayerNorm<B>,
    dropout: Dropout,
}

impl<B: Backend> TextEmbedding<B> {
    /// Embeddings for `vocab` words and texts of up to `max_len` tokens.
    pub fn new(vocab: usize, max_len: usize, hidden: usize, dropout: f64, std: f64, eps: f64, device: &B::Device) -> Self {
        let init = Initializer::Normal { mean: 0.0, std };
        Self {
            word: EmbeddingConfig::new(vocab, hidden)
                .with_initializer(init.clone())
                .init(device),
            position: EmbeddingConfig::new(max_len + POSITION_OFFSET, hidden)
                .with_initializer(init)
                .init(device),
            norm: LayerNormConfig::new(hidden).with_epsilon(eps).init(device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// # Shapes
    /// - `ids`: `[batch, t]` -> `[batch, t, hidden]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let t = ids.dims()[1];
        let positions = self
            .position
            .weight
            .val()
            .narrow(0, POSITION_OFFSET, t)
            .unsqueeze_dim::<3>(0);
        let x = self.word.forward(ids) + positions;
        self.dropout.forward(self.norm.forward(x))
    }
}

/// Visual embedding of an object sequence.
#[derive(Module, Debug)]
pub struct VisualEmbedding<B: Backend> {
    feature: Linear<B>,
    location: Linear<B>,
    norm: LayerNorm<B>,
    dropout: Dropout,
}

impl<B: Backend> VisualEmbedding<B> {
    /// Embeds rows of `feature_dim` features plus a 5-d location into `hidden`.
    pub fn new(feature_dim: usize, hidden: usize, dropout: f64, std: f64, eps: f64, device: &B::Device) -> Self {
        Self {
            feature: init::linear(feature_dim, hidden, std, device),
            location: init::linear(5, hidden, std, device),
            norm: LayerNormConfig::new(hidden).with_epsilon(eps).init(device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// # Shapes
    /// - `features`: `[batch, n, feature_dim]`, `locations`: `[batch, n, 5]` -> `[batch, n, hidden]`
    pub fn forward(&self, features: Tensor<B, 3>, locations: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.feature.forward(features) + self.location.forward(locations);
        self.dropout.forward(self.norm.forward(x))
    }
}

impl<B: Backend> TextEmbedding<B> {
    /// [`TextEmbedding::forward`] for tokens at text positions `start..start + t` (incremental
    /// decoding). `start + t` must not exceed the model's `max_text_len`.
    ///
    /// # Shapes
    /// - `ids`: `[batch, t]` -> `[batch, t, hidden]`
    pub fn forward_at(&self, ids: Tensor<B, 2, Int>, start: usize) -> Tensor<B, 3> {
        let t = ids.dims()[1];
        let positions = self
            .position
            .weight
            .val()
            .narrow(0, POSITION_OFFSET + start, t)
            .unsqueeze_dim::<3>(0);
        let x = self.word.forward(ids) + positions;
        self.dropout.forward(self.norm.forward(x))
    }
}
