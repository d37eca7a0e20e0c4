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
