//! Input embeddings: text (word + learned position, RoBERTa positions starting at 2) and
//! visual (`Linear(feature) + Linear(location)`), each followed by LayerNorm and dropout.

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear};
use burn::prelude::*;

use super::norm::{LayerNorm, LayerNormConfig};
use super::{init, ops};

/// First position id of a text (RoBERTa convention: ids 0 and 1 are reserved).
pub const POSITION_OFFSET: usize = 2;

/// Configuration of a [`TextEmbedding`]: `vocab_size` words, texts of up to `max_len`
/// tokens, width `d_model`.
#[derive(Config, Debug)]
pub struct TextEmbeddingConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest text, in tokens.
    pub max_len: usize,
    /// Embedding width.
    pub d_model: usize,
    /// Dropout probability after the LayerNorm.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Standard deviation of the normal initialisation.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

impl TextEmbeddingConfig {
    /// The embeddings with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TextEmbedding<B> {
        let init = Initializer::Normal {
            mean: 0.0,
            std: self.init_std,
        };
        TextEmbedding {
            word: EmbeddingConfig::new(self.vocab_size, self.d_model)
                .with_initializer(init.clone())
                .init(device),
            position: EmbeddingConfig::new(self.max_len + POSITION_OFFSET, self.d_model)
                .with_initializer(init)
                .init(device),
            norm: LayerNormConfig::new(self.d_model)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

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
    /// # Shapes
    /// - `ids`: `[batch, t]` -> `[batch, t, hidden]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_at(ids, 0)
    }
}

/// Configuration of a [`VisualEmbedding`]: rows of `feature_dim` features plus a 5-d
/// location, embedded into `d_model`.
#[derive(Config, Debug)]
pub struct VisualEmbeddingConfig {
    /// Width of a feature row.
    pub feature_dim: usize,
    /// Embedding width.
    pub d_model: usize,
    /// Dropout probability after the LayerNorm.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Standard deviation of the normal initialisation.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

impl VisualEmbeddingConfig {
    /// The embedding with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VisualEmbedding<B> {
        VisualEmbedding {
            feature: init::linear(self.feature_dim, self.d_model, self.init_std, device),
            location: init::linear(5, self.d_model, self.init_std, device),
            norm: LayerNormConfig::new(self.d_model)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
        }
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
    /// # Shapes
    /// - `features`: `[batch, n, feature_dim]`, `locations`: `[batch, n, 5]` -> `[batch, n, hidden]`
    pub fn forward(&self, features: Tensor<B, 3>, locations: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = ops::linear(&self.feature, features) + ops::linear(&self.location, locations);
        ops::dropout(&self.dropout, self.norm.forward(x))
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
        ops::dropout(&self.dropout, self.norm.forward(x))
    }
}
