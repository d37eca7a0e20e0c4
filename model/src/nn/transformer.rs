//! Transformer encoder layer and stack (post-LN as in UNIMO, or pre-LN).

use burn::config::Config;
use burn::module::Module;
use burn::prelude::*;

use super::attention::{AttentionBlock, AttentionBlockConfig, AttentionConfig};
use super::feed_forward::{FeedForwardBlock, FeedForwardConfig};
use super::norm::{LayerNorm, LayerNormConfig};

/// Configuration of a [`TransformerLayer`]; also describes a Transformer stream (its width,
/// heads, dropout, initialisation and LayerNorm) where other blocks join two streams.
#[derive(Config, Debug)]
pub struct TransformerLayerConfig {
    /// Hidden width.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward width.
    pub d_ffn: usize,
    /// Dropout probability (attention weights and residual branches).
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Standard deviation of the normal weight initialisation.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Pre-LN instead of post-LN.
    #[config(default = false)]
    pub pre_ln: bool,
}

impl TransformerLayerConfig {
    /// An attention block whose queries come from this stream and whose keys and values
    /// come from a stream of width `d_kv`, through `d_inner` split into `heads`.
    pub fn attention(&self, d_kv: usize, d_inner: usize, heads: usize) -> AttentionBlockConfig {
        AttentionBlockConfig::new(
            AttentionConfig::new(self.d_model, d_kv, d_inner, heads)
                .with_dropout(self.dropout)
                .with_init_std(self.init_std),
        )
        .with_layer_norm_eps(self.layer_norm_eps)
        .with_pre_ln(self.pre_ln)
    }

    /// This stream's feed-forward block.
    pub fn feed_forward(&self) -> FeedForwardConfig {
        FeedForwardConfig::new(self.d_model, self.d_ffn)
            .with_dropout(self.dropout)
            .with_init_std(self.init_std)
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_pre_ln(self.pre_ln)
    }

    /// The LayerNorm that closes a pre-LN stack of this stream (`None` for post-LN).
    pub fn final_norm<B: Backend>(&self, device: &B::Device) -> Option<LayerNorm<B>> {
        self.pre_ln.then(|| {
            LayerNormConfig::new(self.d_model)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        })
    }

    /// The layer with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TransformerLayer<B> {
        TransformerLayer {
            attention: self.attention(self.d_model, self.d_model, self.heads).init(device),
            ffn: self.feed_forward().init(device),
        }
    }
}

/// One encoder layer: self-attention block then feed-forward block.
#[derive(Module, Debug)]
pub struct TransformerLayer<B: Backend> {
    attention: AttentionBlock<B>,
    ffn: FeedForwardBlock<B>,
}

impl<B: Backend> TransformerLayer<B> {
    /// # Shapes
    /// - `x`: `[batch, len, hidden]`, `bias`: `[batch, 1, len or 1, len]` -> `[batch, len, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        self.ffn.forward(self.attention.forward(x, None, bias))
    }
}

/// Configuration of an [`Encoder`]: `layers` identical layers.
#[derive(Config, Debug)]
pub struct EncoderConfig {
    /// Each layer.
    pub layer: TransformerLayerConfig,
    /// Number of layers.
    pub layers: usize,
}

impl EncoderConfig {
    /// The stack with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Encoder<B> {
        Encoder {
            layers: (0..self.layers).map(|_| self.layer.init(device)).collect(),
            final_norm: self.layer.final_norm(device),
        }
    }
}

/// A stack of encoder layers; with pre-LN a final LayerNorm closes the stack.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    layers: Vec<TransformerLayer<B>>,
    final_norm: Option<LayerNorm<B>>,
}

impl<B: Backend> Encoder<B> {
    /// # Shapes
    /// - `x`: `[batch, len, hidden]`, `bias`: `[batch, 1, len or 1, len]` -> `[batch, len, hidden]`
    pub fn forward(&self, mut x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        for layer in &self.layers {
            x = layer.forward(x, bias.clone());
        }
        match &self.final_norm {
            Some(norm) => norm.forward(x),
            None => x,
        }
    }
}

/// Cached keys and values of every layer of an [`Encoder`], for incremental decoding.
#[derive(Debug, Clone)]
pub struct EncoderCache<B: Backend> {
    /// One entry per layer.
    pub layers: Vec<super::attention::KeyValues<B>>,
}

impl<B: Backend> EncoderCache<B> {
    /// An empty cache for `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self { layers: vec![None; layers] }
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dims()[2])
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps (and repeats) the batch rows `rows` of every layer (beam reordering).
    pub fn select(&mut self, rows: Tensor<B, 1, Int>) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, rows.clone());
            *v = v.clone().select(0, rows.clone());
        }
    }
}

impl<B: Backend> TransformerLayer<B> {
    /// [`TransformerLayer::forward`] over cached positions.
    pub fn forward_cached(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>, cache: &mut super::attention::KeyValues<B>) -> Tensor<B, 3> {
        self.ffn.forward(self.attention.forward_cached(x, bias, cache))
    }
}

impl<B: Backend> Encoder<B> {
    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// [`Encoder::forward`] for new positions over the cached ones, appending their keys and
    /// values to `cache`.
    ///
    /// # Shapes
    /// - `x`: `[batch, lq, hidden]`, `bias`: `[batch, 1, lq or 1, cached + lq]` -> `[batch, lq, hidden]`
    pub fn forward_cached(&self, mut x: Tensor<B, 3>, bias: Tensor<B, 4>, cache: &mut EncoderCache<B>) -> Tensor<B, 3> {
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward_cached(x, bias.clone(), kv);
        }
        match &self.final_norm {
            Some(norm) => norm.forward(x),
            None => x,
        }
    }
}
