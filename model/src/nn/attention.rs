//! Multi-head attention with an additive bias mask; queries and keys may come from different
//! streams (self-attention in UNIMO, co-attention in ViLBERT).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;

use super::norm::{LayerNorm, LayerNormConfig};
use super::{init, ops};

/// Configuration of an [`Attention`] layer: queries of width `d_query` attend to keys and
/// values of width `d_kv` through an inner width `d_inner` split into `heads`; the output has
/// width `d_query`.
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Width of the queries and of the output.
    pub d_query: usize,
    /// Width of the stream the keys and values come from.
    pub d_kv: usize,
    /// Inner width of queries, keys and values (a multiple of `heads`).
    pub d_inner: usize,
    /// Attention heads.
    pub heads: usize,
    /// Dropout probability on the attention weights.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Standard deviation of the normal weight initialisation.
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl AttentionConfig {
    /// The layer with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Attention<B> {
        let std = self.init_std;
        Attention {
            query: init::linear(self.d_query, self.d_inner, std, device),
            key: init::linear(self.d_kv, self.d_inner, std, device),
            value: init::linear(self.d_kv, self.d_inner, std, device),
            output: init::linear(self.d_inner, self.d_query, std, device),
            dropout: DropoutConfig::new(self.dropout).init(),
            heads: self.heads,
            head_dim: self.d_inner / self.heads,
        }
    }
}

/// Multi-head scaled dot-product attention.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    output: Linear<B>,
    dropout: Dropout,
    heads: usize,
    head_dim: usize,
}

impl<B: Backend> Attention<B> {
    /// # Shapes
    /// - `query`: `[batch, lq, d_query]`
    /// - `context`: `[batch, lk, d_kv]`
    /// - `bias`: `[batch, 1, lq or 1, lk]`, 0 where visible, very negative where blocked
    /// - output: `[batch, lq, d_query]`
    pub fn forward(&self, query: Tensor<B, 3>, context: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        // Separate key and value projections: splitting a fused one would copy both halves.
        let q = ops::linear(&self.query, query);
        let k = ops::linear(&self.key, context.clone());
        let v = ops::linear(&self.value, context);
        let context = ops::attention(q, k, v, bias, self.heads, &self.dropout);
        ops::linear(&self.output, context)
    }
}

/// Configuration of an [`AttentionBlock`]: the attention, its LayerNorm (of width
/// `attention.d_query`) and the placement of that norm.
#[derive(Config, Debug)]
pub struct AttentionBlockConfig {
    /// The attention; its dropout also applies to the residual branch.
    pub attention: AttentionConfig,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Pre-LN (normalise the branch's input) instead of post-LN (normalise the sum).
    #[config(default = false)]
    pub pre_ln: bool,
}

impl AttentionBlockConfig {
    /// The block with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> AttentionBlock<B> {
        AttentionBlock {
            attention: self.attention.init(device),
            norm: LayerNormConfig::new(self.attention.d_query)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(self.attention.dropout).init(),
            pre_ln: self.pre_ln,
        }
    }
}

/// Attention wrapped with its residual connection and LayerNorm (post-LN or pre-LN).
#[derive(Module, Debug)]
pub struct AttentionBlock<B: Backend> {
    attention: Attention<B>,
    norm: LayerNorm<B>,
    dropout: Dropout,
    pre_ln: bool,
}

impl<B: Backend> AttentionBlock<B> {
    /// Self-attention when `context` is `None`, cross-attention to `context` otherwise.
    /// (With pre-LN, the context is expected already normalised by its own stream.)
    ///
    /// # Shapes
    /// - `x`: `[batch, lq, d_query]`, `context`: `[batch, lk, d_kv]`
    /// - `bias`: `[batch, 1, lq or 1, lk]`
    /// - output: `[batch, lq, d_query]`
    pub fn forward(&self, x: Tensor<B, 3>, context: Option<Tensor<B, 3>>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        if self.pre_ln {
            let normed = self.norm.forward(x.clone());
            let context = context.unwrap_or_else(|| normed.clone());
            x + ops::dropout(&self.dropout, self.attention.forward(normed, context, bias))
        } else {
            let context = context.unwrap_or_else(|| x.clone());
            let out = self.attention.forward(x.clone(), context, bias);
            self.norm.forward(x + ops::dropout(&self.dropout, out))
        }
    }
}

/// Keys and values of earlier positions of one attention layer, for incremental decoding.
///
/// # Shapes
/// - keys and values: `[batch, heads, cached, head_dim]`
pub type KeyValues<B> = Option<(Tensor<B, 4>, Tensor<B, 4>)>;

impl<B: Backend> Attention<B> {
    /// Self-attention of new positions `x` over the cached positions and themselves; the new
    /// keys and values are appended to `cache`. Exact wherever earlier positions never attend
    /// to later ones (the prefix-LM and image-to-text masks), since cached states then never
    /// change.
    ///
    /// # Shapes
    /// - `x`: `[batch, lq, d]`, `bias`: `[batch, 1, lq or 1, cached + lq]` -> `[batch, lq, d]`
    pub fn forward_cached(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>, cache: &mut KeyValues<B>) -> Tensor<B, 3> {
        let [b, lq, _] = x.dims();
        let (h, d) = (self.heads, self.head_dim);
        let split = |t: Tensor<B, 3>| t.reshape([b, lq, h, d]).swap_dims(1, 2);
        let q = split(ops::linear(&self.query, x.clone()));
        let mut k = split(ops::linear(&self.key, x.clone()));
        let mut v = split(ops::linear(&self.value, x));
        if let Some((pk, pv)) = cache.take() {
            k = Tensor::cat(vec![pk, k], 2);
            v = Tensor::cat(vec![pv, v], 2);
        }
        *cache = Some((k.clone(), v.clone()));
        let scores = q.matmul(k.swap_dims(2, 3));
        let weights = ops::dropout(&self.dropout, ops::attention_softmax(scores, 1.0 / (d as f64).sqrt(), bias));
        let context = weights.matmul(v).swap_dims(1, 2).reshape([b, lq, h * d]);
        ops::linear(&self.output, context)
    }
}

impl<B: Backend> AttentionBlock<B> {
    /// [`AttentionBlock::forward`] (self-attention) over cached positions; see
    /// [`Attention::forward_cached`].
    pub fn forward_cached(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>, cache: &mut KeyValues<B>) -> Tensor<B, 3> {
        if self.pre_ln {
            let normed = self.norm.forward(x.clone());
            x + ops::dropout(&self.dropout, self.attention.forward_cached(normed, bias, cache))
        } else {
            let out = self.attention.forward_cached(x.clone(), bias, cache);
            self.norm.forward(x + ops::dropout(&self.dropout, out))
        }
    }
}
