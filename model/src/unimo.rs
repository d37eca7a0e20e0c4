//! UNIMO's backbone: text and visual embeddings feeding one shared Transformer over
//! `[IMG] objects [CLS] text [SEP]` (pairs) or over either modality alone.

use burn::config::Config;
use burn::module::Module;
use burn::prelude::*;

use crate::config::ModelConfig;
use crate::group_tensors::{Encoded, GroupTensors};
use crate::nn::embeddings::{TextEmbedding, TextEmbeddingConfig, VisualEmbedding, VisualEmbeddingConfig};
use crate::nn::transformer::{Encoder, EncoderCache, EncoderConfig};

/// Configuration of a [`UnimoBackbone`]; `From<&ModelConfig>` gives the one of a model.
#[derive(Config, Debug)]
pub struct UnimoBackboneConfig {
    /// Text embedding.
    pub text: TextEmbeddingConfig,
    /// Visual embedding (at the Transformer's width).
    pub visual: VisualEmbeddingConfig,
    /// The shared Transformer.
    pub encoder: EncoderConfig,
}

impl From<&ModelConfig> for UnimoBackboneConfig {
    fn from(config: &ModelConfig) -> Self {
        Self::new(
            config.text_embedding(),
            config.visual_embedding(),
            EncoderConfig::new(config.text_layer(), config.layers),
        )
    }
}

impl UnimoBackboneConfig {
    /// The backbone with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> UnimoBackbone<B> {
        UnimoBackbone {
            text: self.text.init(device),
            visual: self.visual.init(device),
            encoder: self.encoder.init(device),
        }
    }
}

/// The single-stream UNIMO network (without pretraining heads).
#[derive(Module, Debug)]
pub struct UnimoBackbone<B: Backend> {
    /// Text embedding (its word matrix is tied to the MLM output).
    pub text: TextEmbedding<B>,
    visual: VisualEmbedding<B>,
    encoder: Encoder<B>,
}

impl<B: Backend> UnimoBackbone<B> {
    /// Encodes one group; visual rows come first, then text.
    ///
    /// # Shapes
    /// - output visual: `[rows * n, hidden]`, text: `[rows * t, hidden]`
    pub(crate) fn encode(&self, input: &GroupTensors<B>) -> Encoded<B> {
        let mut parts = Vec::with_capacity(2);
        if let (Some(f), Some(l)) = (&input.features, &input.locations) {
            parts.push(self.visual.forward(f.clone(), l.clone()));
        }
        if let Some(ids) = &input.ids {
            parts.push(self.text.forward(ids.clone()));
        }
        let x = if parts.len() == 1 {
            parts.remove(0)
        } else {
            Tensor::cat(parts, 1)
        };
        let h = self.encoder.forward(x, input.joint_bias());
        let hidden = h.dims()[2];
        let (rows, n, t) = (input.rows, input.n, input.t);
        Encoded {
            visual: (n > 0).then(|| h.clone().narrow(1, 0, n).reshape([rows * n, hidden])),
            text: (t > 0).then(|| h.narrow(1, n, t).reshape([rows * t, hidden])),
            n,
            t,
        }
    }
}

impl<B: Backend> UnimoBackbone<B> {
    /// Encodes new positions over the cached ones (incremental decoding): the visual rows
    /// (if any) come first, then the text tokens at text positions `text_start..`.
    ///
    /// # Shapes
    /// - `visual`: features `[batch, n, feature_dim]` and locations `[batch, n, 5]`
    /// - `ids`: `[batch, t]`, `bias`: `[batch, 1, n + t or 1, cached + n + t]`
    /// - output: `[batch, n + t, hidden]`
    pub fn forward_cached(
        &self,
        visual: Option<(Tensor<B, 3>, Tensor<B, 3>)>,
        ids: Option<Tensor<B, 2, Int>>,
        text_start: usize,
        bias: Tensor<B, 4>,
        cache: &mut EncoderCache<B>,
    ) -> Tensor<B, 3> {
        let mut parts = Vec::with_capacity(2);
        if let Some((f, l)) = visual {
            parts.push(self.visual.forward(f, l));
        }
        if let Some(ids) = ids {
            parts.push(self.text.forward_at(ids, text_start));
        }
        let x = if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(parts, 1) };
        self.encoder.forward_cached(x, bias, cache)
    }

    /// Layers of the shared Transformer.
    pub fn num_layers(&self) -> usize {
        self.encoder.num_layers()
    }
}
