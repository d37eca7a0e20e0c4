//! ViLBERT's co-attention block: each stream's queries attend to the other stream's keys and
//! values, then go through the stream's own residual, LayerNorm and feed-forward.

use burn::module::Module;
use burn::prelude::*;

use super::attention::AttentionBlock;
use super::feed_forward::FeedForwardBlock;
use super::transformer::StreamDims;

/// One co-attention block joining a text stream and a visual stream.
#[derive(Module, Debug)]
pub struct CoAttentionBlock<B: Backend> {
    text_attends_visual: AttentionBlock<B>,
    visual_attends_text: AttentionBlock<B>,
    text_ffn: FeedForwardBlock<B>,
    visual_ffn: FeedForwardBlock<B>,
}

impl<B: Backend> CoAttentionBlock<B> {
    /// The co-attention runs at the visual width with the visual stream's heads (ViLBERT's
    /// `bi_hidden_size`).
    pub fn new(text: StreamDims, visual: StreamDims, device: &B::Device) -> Self {
        let inner = visual.hidden;
        let heads = visual.heads;
        Self {
            text_attends_visual: AttentionBlock::new(
                text.hidden, visual.hidden, inner, heads, text.dropout, text.std, text.eps, text.pre_ln, device,
            ),
            visual_attends_text: AttentionBlock::new(
                visual.hidden, text.hidden, inner, heads, visual.dropout, visual.std, visual.eps, visual.pre_ln, device,
            ),
            text_ffn: FeedForwardBlock::new(text.hidden, text.ffn, text.dropout, text.std, text.eps, text.pre_ln, device),
            visual_ffn: FeedForwardBlock::new(
                visual.hidden, visual.ffn, visual.dropout, visual.std, visual.eps, visual.pre_ln, device,
            ),
        }
    }

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
