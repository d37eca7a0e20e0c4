//! Pretraining heads shared by both architectures: tied MLM output, region regression and
//! classification, the contrastive projections with their learnable temperature, and the
//! image-text matching classifier.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::{gelu, relu};

use crate::config::ModelConfig;
use crate::nn::init;

/// Initial contrastive temperature (CLIP, UNIMO-2).
pub const INIT_TEMPERATURE: f64 = 0.07;
/// Smallest temperature (UNIMO-2 clips to [0.001, 0.5]).
pub const MIN_TEMPERATURE: f64 = 0.001;
/// Largest temperature.
pub const MAX_TEMPERATURE: f64 = 0.5;

/// All pretraining heads.
#[derive(Module, Debug)]
pub struct Heads<B: Backend> {
    mlm_transform: Linear<B>,
    mlm_norm: LayerNorm<B>,
    mlm_bias: Param<Tensor<B, 1>>,
    mrm_feature: Linear<B>,
    mrm_classes: Option<Linear<B>>,
    project_text: Linear<B>,
    project_image: Linear<B>,
    /// `ln(1 / temperature)`, clamped to the temperature range when used.
    logit_scale: Param<Tensor<B, 1>>,
    itm_text: Linear<B>,
    itm_image: Linear<B>,
    itm: Linear<B>,
}

/// Row-wise L2 normalisation.
///
/// # Shapes
/// - `x`: `[k, d]` -> `[k, d]`
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).add_scalar(1e-12).sqrt();
    x / norm
}

impl<B: Backend> Heads<B> {
    /// Heads for `config` with fresh weights.
    pub fn new(config: &ModelConfig, device: &B::Device) -> Self {
        let (ht, hv, p) = (config.hidden, config.visual_hidden(), config.pooled_dim());
        let std = config.init_std;
        Self {
            mlm_transform: init::linear(ht, ht, std, device),
            mlm_norm: LayerNormConfig::new(ht)
                .with_epsilon(config.layer_norm_eps)
                .init(device),
            mlm_bias: Param::from_tensor(Tensor::zeros([config.vocab_size], device)),
            mrm_feature: init::linear(hv, config.feature_dim, std, device),
            mrm_classes: (config.region_classes > 0).then(|| init::linear(hv, config.region_classes, std, device)),
            project_text: init::linear(ht, p, std, device),
            project_image: init::linear(hv, p, std, device),
            logit_scale: Param::from_tensor(Tensor::from_floats([(1.0 / INIT_TEMPERATURE).ln() as f32], device)),
            itm_text: init::linear(ht, p, std, device),
            itm_image: init::linear(hv, p, std, device),
            itm: init::linear(p, 1, std, device),
        }
    }

    /// Vocabulary logits, output tied to the word embeddings.
    ///
    /// # Shapes
    /// - `hidden`: `[m, hidden]`, `word`: `[vocab, hidden]` -> `[m, vocab]`
    pub fn token_logits(&self, hidden: Tensor<B, 2>, word: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = self.mlm_norm.forward(gelu(self.mlm_transform.forward(hidden)));
        h.matmul(word.transpose()) + self.mlm_bias.val().unsqueeze_dim(0)
    }

    /// Reconstructed region features.
    ///
    /// # Shapes
    /// - `hidden`: `[r, visual_hidden]` -> `[r, feature_dim]`
    pub fn region_features(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        self.mrm_feature.forward(hidden)
    }

    /// Detector-class logits, when the config has region classes.
    ///
    /// # Shapes
    /// - `hidden`: `[r, visual_hidden]` -> `[r, classes]`
    pub fn region_class_logits(&self, hidden: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        self.mrm_classes.as_ref().map(|l| l.forward(hidden))
    }

    /// Pooled `[CLS]` states projected into the shared space and L2-normalised.
    ///
    /// # Shapes
    /// - `cls`: `[k, hidden]` -> `[k, pooled]`
    pub fn text_embedding(&self, cls: Tensor<B, 2>) -> Tensor<B, 2> {
        l2_normalize(self.project_text.forward(cls))
    }

    /// Pooled `[IMG]` states projected into the shared space and L2-normalised.
    ///
    /// # Shapes
    /// - `img`: `[k, visual_hidden]` -> `[k, pooled]`
    pub fn image_embedding(&self, img: Tensor<B, 2>) -> Tensor<B, 2> {
        l2_normalize(self.project_image.forward(img))
    }

    /// `1 / temperature`, with the temperature clipped to its range.
    ///
    /// # Shapes
    /// - output: `[1]`
    pub fn logit_scale(&self) -> Tensor<B, 1> {
        self.logit_scale
            .val()
            .clamp((1.0 / MAX_TEMPERATURE).ln(), (1.0 / MIN_TEMPERATURE).ln())
            .exp()
    }

    /// Image-text matching logits from the element-wise product of the pooled vectors.
    ///
    /// # Shapes
    /// - `cls`: `[k, hidden]`, `img`: `[k, visual_hidden]` -> `[k]`
    pub fn match_logits(&self, cls: Tensor<B, 2>, img: Tensor<B, 2>) -> Tensor<B, 1> {
        let t = relu(self.itm_text.forward(cls));
        let v = relu(self.itm_image.forward(img));
        let k = t.dims()[0];
        self.itm.forward(t * v).reshape([k])
    }
}
