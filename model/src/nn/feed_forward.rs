//! Position-wise feed-forward sub-layer (Linear, GELU, Linear) with residual and LayerNorm.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::init;

/// Feed-forward block with its residual connection and LayerNorm (post-LN or pre-LN).
#[derive(Module, Debug)]
pub struct FeedForwardBlock<B: Backend> {
    inner: Linear<B>,
    outer: Linear<B>,
    norm: LayerNorm<B>,
    dropout: Dropout,
    pre_ln: bool,
}

impl<B: Backend> FeedForwardBlock<B> {
    /// A block of width `d_model` with hidden width `d_ffn`.
    pub fn new(d_model: usize, d_ffn: usize, dropout: f64, std: f64, eps: f64, pre_ln: bool, device: &B::Device) -> Self {
        Self {
            inner: init::linear(d_model, d_ffn, std, device),
            outer: init::linear(d_ffn, d_model, std, device),
            norm: LayerNormConfig::new(d_model).with_epsilon(eps).init(device),
            dropout: DropoutConfig::new(dropout).init(),
            pre_ln,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, len, d_model]` -> `[batch, len, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.pre_ln {
            let h = self.outer.forward(gelu(self.inner.forward(self.norm.forward(x.clone()))));
            x + self.dropout.forward(h)
        } else {
            let h = self.outer.forward(gelu(self.inner.forward(x.clone())));
            self.norm.forward(x + self.dropout.forward(h))
        }
    }
}
