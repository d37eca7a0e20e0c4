//! Position-wise feed-forward sub-layer (Linear, GELU, Linear) with residual and LayerNorm.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;

use super::norm::{LayerNorm, LayerNormConfig};
use super::{init, ops};

/// Configuration of a [`FeedForwardBlock`] of width `d_model` with hidden width `d_ffn`.
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Width of the block's input and output.
    pub d_model: usize,
    /// Hidden width.
    pub d_ffn: usize,
    /// Dropout probability on the residual branch.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Standard deviation of the normal weight initialisation.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Pre-LN (normalise the branch's input) instead of post-LN (normalise the sum).
    #[config(default = false)]
    pub pre_ln: bool,
}

impl FeedForwardConfig {
    /// The block with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> FeedForwardBlock<B> {
        FeedForwardBlock {
            inner: init::linear(self.d_model, self.d_ffn, self.init_std, device),
            outer: init::linear(self.d_ffn, self.d_model, self.init_std, device),
            norm: LayerNormConfig::new(self.d_model)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            pre_ln: self.pre_ln,
        }
    }
}

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
    /// # Shapes
    /// - `x`: `[batch, len, d_model]` -> `[batch, len, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.pre_ln {
            let h = ops::linear(&self.outer, ops::gelu(ops::linear(&self.inner, self.norm.forward(x.clone()))));
            x + ops::dropout(&self.dropout, h)
        } else {
            let h = ops::linear(&self.outer, ops::gelu(ops::linear(&self.inner, x.clone())));
            self.norm.forward(x + ops::dropout(&self.dropout, h))
        }
    }
}
