//! ViLBERT's co-attention block: each stream's queries attend to the other stream's keys and
//! values, then go through the stream's own residual, LayerNorm and feed-forward.

use burn::config::Config;
use burn::module::Module;
use burn::prelude::*;

use super::attention::AttentionBlock;
use super::feed_forward::FeedForwardBlock;
use super::transformer::TransformerLayerConfig;

/// Configuration of a [`CoAttentionBlock`] joining a text stream and a visual stream. The
/// co-attention runs at the visual width with the visual stream's heads (ViLBERT's
/// `bi_hidden_size`).
#[derive(Config, Debug)]
pub struct CoAttentionConfig {
    /// The text stream.
    pub text: TransformerLayerConfig,
    /// The visual stream.
    pub visual: TransformerLayerConfig,
}

impl CoAttentionConfig {
    /// The block with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> CoAttentionBlock<B> {
        let (text, visual) = (&self.text, &self.visual);
        let (inner, heads) = (visual.d_model, visual.heads);
        CoAttentionBlock {
            text_attends_visual: text.attention(visual.d_model, inner, heads).init(device),
            visual_attends_text: visual.attention(text.d_model, inner, heads).init(device),
            text_ffn: text.feed_forward().init(device),
            visual_ffn: visual.feed_forward().init(device),
        }
    }
}

/// One co-attention block joining a text stream and a visual stream.
#[derive(Module, Debug)]
pub struct CoAttentionBlock<B: Backend> {
    text_attends_visual: AttentionBlock<B>,
    visual_attends_text: AttentionBlock<B>,
    text_ffn: FeedForwardBlock<B>,
    visual_ffn: FeedForwardBlock<B>,
}

impl<B: Backend> CoAttentionBlock<B> {
    /// # Shapes
    /// - `text`: `[batch, t, text_hidden]`, `visual`: `[batch, n, visual_hidden]`
    /// - `visual_keys`: `[batch, 1, 1, n]` (visual padding), `text_keys`: `[batch, 1, 1, t]`
    /// - output: both streams, same shapes as the inputs
    pub fn forward(
        &self,
        text: Tensor<B, 3>,
        visual: Tensor<B, 3>,
        visual_keys: Tensor<B, 4>,
        text_keys: Tensor<B, 4>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let t = self
            .text_attends_visual
            .forward(text.clone(), Some(visual.clone()), visual_keys);
        let v = self.visual_attends_text.forward(visual, Some(text), text_keys);
        (self.text_ffn.forward(t), self.visual_ffn.forward(v))
    }
}
