//! ViLBERT's backbone: a text stream and a visual stream joined by co-attention blocks.
//! The first `layers - co_layers` text layers run alone; then each block runs one text
//! layer, one visual layer and one co-attention block. Text-only rows run the text stream
//! without co-attention, image-only rows the visual stream alone.

use burn::config::Config;
use burn::module::Module;
use burn::prelude::*;

use crate::config::ModelConfig;
use crate::group_tensors::{Encoded, GroupTensors};
use crate::nn::co_attention::{CoAttentionBlock, CoAttentionConfig};
use crate::nn::norm::LayerNorm;
use crate::nn::embeddings::{TextEmbedding, TextEmbeddingConfig, VisualEmbedding, VisualEmbeddingConfig};
use crate::nn::transformer::{TransformerLayer, TransformerLayerConfig};

/// Configuration of a [`VilbertBackbone`]; `From<&ModelConfig>` gives the one of a model.
#[derive(Config, Debug)]
pub struct VilbertBackboneConfig {
    /// Text embedding.
    pub text: TextEmbeddingConfig,
    /// Visual embedding (at the visual stream's width).
    pub visual: VisualEmbeddingConfig,
    /// Each layer of the text stream.
    pub text_layer: TransformerLayerConfig,
    /// Each layer of the visual stream.
    pub visual_layer: TransformerLayerConfig,
    /// Text-stream layers.
    pub layers: usize,
    /// Co-attention blocks (at most `layers`); the visual stream has one layer per block.
    pub co_layers: usize,
}

impl From<&ModelConfig> for VilbertBackboneConfig {
    /// # Panics
    /// When `config` carries no ViLBERT dims (a validated ViLBERT config always does).
    fn from(config: &ModelConfig) -> Self {
        let v = config.vilbert.expect("validated: vilbert configs carry their dims");
        Self::new(
            config.text_embedding(),
            config.visual_embedding(),
            config.text_layer(),
            config.visual_layer(),
            config.layers,
            v.co_layers,
        )
    }
}

impl VilbertBackboneConfig {
    /// The backbone with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VilbertBackbone<B> {
        let co = CoAttentionConfig::new(self.text_layer.clone(), self.visual_layer.clone());
        VilbertBackbone {
            text: self.text.init(device),
            visual: self.visual.init(device),
            text_layers: (0..self.layers).map(|_| self.text_layer.init(device)).collect(),
            visual_layers: (0..self.co_layers).map(|_| self.visual_layer.init(device)).collect(),
            co_layers: (0..self.co_layers).map(|_| co.init(device)).collect(),
            text_norm: self.text_layer.final_norm(device),
            visual_norm: self.visual_layer.final_norm(device),
        }
    }
}

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
    /// Encodes one group: text only, image only, or both streams with co-attention.
    ///
    /// # Shapes
    /// - output visual: `[rows * n, visual_hidden]`, text: `[rows * t, hidden]`
    pub(crate) fn encode(&self, input: &GroupTensors<B>) -> Encoded<B> {
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
