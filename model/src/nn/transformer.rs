//! Transformer encoder layer and stack (post-LN as in UNIMO, or pre-LN).

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;

use super::attention::AttentionBlock;
use super::feed_forward::FeedForwardBlock;

/// Dimensions of one Transformer stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamDims {
    /// Hidden width.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Dropout probability.
    pub dropout: f64,
    /// Initialisation standard deviation.
    pub std: f64,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// Pre-LN instead of post-LN.
    pub pre_ln: bool,
}

/// One encoder layer: self-attention block then feed-forward block.
#[derive(Module, Debug)]
pub struct TransformerLayer<B: Backend> {
    attention: AttentionBlock<B>,
    ffn: FeedForwardBlock<B>,
}

impl<B: Backend> TransformerLayer<B> {
    /// A layer of the given stream dimensions.
    pub fn new(d: StreamDims, device: &B::Device) -> Self {
        Self {
            attention: AttentionBlock::new(
                d.hidden, d.hidden, d.hidden, d.heads, d.dropout, d.std, d.eps, d.pre_ln, device,
            ),
            ffn: FeedForwardBlock::new(d.hidden, d.ffn, d.dropout, d.std, d.eps, d.pre_ln, device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, len, hidden]`, `bias`: `[batch, 1, len or 1, len]` -> `[batch, len, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        self.ffn.forward(self.attention.forward(x, None, bias))
    }
}

/// A stack of encoder layers; with pre-LN a final LayerNorm closes the stack.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    layers: Vec<TransformerLayer<B>>,
    final_norm: Option<LayerNorm<B>>,
}

impl<B: Backend> Encoder<B> {
    /// `layers` layers of the given dimensions.
    pub fn new(layers: usize, d: StreamDims, device: &B::Device) -> Self {
        Self {
            layers: (0..layers).map(|_| TransformerLayer::new(d, device)).collect(),
            final_norm: d
                .pre_ln
                .then(|| LayerNormConfig::new(d.hidden).with_epsilon(d.eps).init(device)),
        }
    }

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
