//! ViLBERT's backbone: a text stream and a visual stream joined by co-attention blocks.
//! The first `layers - co_layers` text layers run alone; then each block runs one text
//! layer, one visual layer and one co-attention block. Text-only rows run the text stream
//! without co-attention, image-only rows the visual stream alone.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;

use crate::config::ModelConfig;
use crate::group_tensors::{Encoded, GroupTensors};
use crate::nn::co_attention::CoAttentionBlock;
use crate::nn::embeddings::{TextEmbedding, VisualEmbedding};
use crate::nn::transformer::{StreamDims, TransformerLayer};

/// The two-stream ViLBERT network (without pretraining heads).
#[derive(Module, Debug)]
pub struct VilbertBackbone<B: Backend> {
    /// Text embedding (its word matrix is tied to the MLM output).
    pub text: TextEmbedding<B>,
    visual: VisualEmbedding<B>,
    text_layers: Vec<TransformerLayer<B>>,
    visual_layers: Vec<TransformerLayer<B>>,
    co_layers: Vec<CoAttentionBlock<B>>,
    text_norm: Option<LayerNorm<B>>,
    visual_norm: Option<LayerNorm<B>>,
}

impl<B: Backend> VilbertBackbone<B> {
    /// Builds the backbone of `config` (which must carry ViLBERT dims) with fresh weights.
    pub fn new(config: &ModelConfig, device: &B::Device) -> Self {
        let v = config.vilbert.expect("validated: vilbert configs carry their dims");
        let (std, eps, p) = (config.init_std, config.layer_norm_eps, config.dropout);
        let text_dims = StreamDims {
            hidden: config.hidden,
            heads: config.heads,
            ffn: config.ffn,
            dropout: p,
            std,
            eps,
            pre_ln: config.pre_ln,
        };
        let visual_dims = StreamDims {
            hidden: v.visual_hidden,
            heads: v.visual_heads,
            ffn: v.visual_ffn,
            ..text_dims
        };
        let norm = |d: usize| {
            config
                .pre_ln
                .then(|| LayerNormConfig::new(d).with_epsilon(eps).init(device))
        };
        Self {
            text: TextEmbedding::new(config.vocab_size, config.max_text_len, config.hidden, p, std, eps, device),
            visual: VisualEmbedding::new(config.feature_dim, v.visual_hidden, p, std, eps, device),
            text_layers: (0..config.layers).map(|_| TransformerLayer::new(text_dims, device)).collect(),
            visual_layers: (0..v.co_layers).map(|_| TransformerLayer::new(visual_dims, device)).collect(),
            co_layers: (0..v.co_layers)
                .map(|_| CoAttentionBlock::new(text_dims, visual_dims, device))
                .collect(),
            text_norm: norm(config.hidden),
            visual_norm: norm(v.visual_hidden),
        }
    }

    /// Encodes one group: text only, image only, or both streams with co-attention.
    ///
    /// # Shapes
    /// - output visual: `[rows * n, visual_hidden]`, text: `[rows * t, hidden]`
    pub fn encode(&self, input: &GroupTensors<B>) -> Encoded<B> {
        let solo = self.text_layers.len() - self.co_layers.len();
        let mut text = input.ids.as_ref().map(|ids| self.text.forward(ids.clone()));
        let mut visual = match (&input.features, &input.locations) {
            (Some(f), Some(l)) => Some(self.visual.forward(f.clone(), l.clone())),
            _ => None,
        };
        let text_bias = text.as_ref().map(|_| input.text_bias());
        let text_keys = (text.is_some() && visual.is_some()).then(|| input.text_keys());
        let visual_keys = visual.as_ref().map(|_| input.visual_keys());
        if let (Some(x), Some(bias)) = (text.take(), &text_bias) {
            let mut x = x;
            for layer in &self.text_layers[..solo] {
                x = layer.forward(x, bias.clone());
            }
            text = Some(x);
        }
        for (i, co) in self.co_layers.iter().enumerate() {
            if let (Some(x), Some(bias)) = (text.take(), &text_bias) {
                text = Some(self.text_layers[solo + i].forward(x, bias.clone()));
            }
            if let (Some(x), Some(keys)) = (visual.take(), &visual_keys) {
                visual = Some(self.visual_layers[i].forward(x, keys.clone()));
            }
            if let (Some(tk), Some(vk)) = (&text_keys, &visual_keys) {
                if let (Some(t), Some(v)) = (text.take(), visual.take()) {
                    let (t, v) = co.forward(t, v, vk.clone(), tk.clone());
                    text = Some(t);
                    visual = Some(v);
                }
            }
        }
        let close = |x: Tensor<B, 3>, norm: &Option<LayerNorm<B>>| match norm {
            Some(n) => n.forward(x),
            None => x,
        };
        let (rows, n, t) = (input.rows, input.n, input.t);
        Encoded {
            visual: visual.map(|x| {
                let d = x.dims()[2];
                close(x, &self.visual_norm).reshape([rows * n, d])
            }),
            text: text.map(|x| {
                let d = x.dims()[2];
                close(x, &self.text_norm).reshape([rows * t, d])
            }),
            n,
            t,
        }
    }
}
