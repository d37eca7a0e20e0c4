//! Pretraining heads shared by both architectures: tied MLM output, region regression and
//! classification, the contrastive projections with their learnable temperature, and the
//! image-text matching classifier.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::config::ModelConfig;
use crate::nn::norm::{LayerNorm, LayerNormConfig};
use crate::nn::{init, ops};

/// Initial contrastive temperature (CLIP, UNIMO-2).
pub const INIT_TEMPERATURE: f64 = 0.07;
/// Smallest temperature (UNIMO-2 clips to [0.001, 0.5]).
pub const MIN_TEMPERATURE: f64 = 0.001;
/// Largest temperature.
pub const MAX_TEMPERATURE: f64 = 0.5;

/// Configuration of the [`Heads`]; `From<&ModelConfig>` gives the one of a model.
#[derive(Config, Debug)]
pub struct HeadsConfig {
    /// Width of the text hidden states.
    pub d_text: usize,
    /// Width of the visual hidden states.
    pub d_visual: usize,
    /// Width of the shared (pooled, projected) space.
    pub d_pooled: usize,
    /// Vocabulary size (the MLM output bias).
    pub vocab_size: usize,
    /// Width of a visual feature row (the region regression target).
    pub feature_dim: usize,
    /// Detector classes of the region KL head (0: no such head).
    #[config(default = 0)]
    pub region_classes: usize,
    /// Standard deviation of the normal weight initialisation.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

impl From<&ModelConfig> for HeadsConfig {
    fn from(config: &ModelConfig) -> Self {
        Self::new(config.hidden, config.visual_hidden(), config.pooled_dim(), config.vocab_size, config.feature_dim)
            .with_region_classes(config.region_classes)
            .with_init_std(config.init_std)
            .with_layer_norm_eps(config.layer_norm_eps)
    }
}

impl HeadsConfig {
    /// The heads with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Heads<B> {
        let (ht, hv, p) = (self.d_text, self.d_visual, self.d_pooled);
        let std = self.init_std;
        Heads {
            mlm_transform: init::linear(ht, ht, std, device),
            mlm_norm: LayerNormConfig::new(ht).with_epsilon(self.layer_norm_eps).init(device),
            mlm_bias: Param::from_tensor(Tensor::zeros([self.vocab_size], device)),
            mrm_feature: init::linear(hv, self.feature_dim, std, device),
            mrm_classes: (self.region_classes > 0).then(|| init::linear(hv, self.region_classes, std, device)),
            project_text: init::linear(ht, p, std, device),
            project_image: init::linear(hv, p, std, device),
            logit_scale: Param::from_tensor(Tensor::from_floats([(1.0 / INIT_TEMPERATURE).ln() as f32], device)),
            itm_text: init::linear(ht, p, std, device),
            itm_image: init::linear(hv, p, std, device),
            itm: init::linear(p, 1, std, device),
        }
    }
}

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
    /// Vocabulary logits, output tied to the word embeddings.
    ///
    /// # Shapes
    /// - `hidden`: `[m, hidden]`, `word`: `[vocab, hidden]` -> `[m, vocab]`
    pub fn token_logits(&self, hidden: Tensor<B, 2>, word: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = self.mlm_norm.forward(ops::gelu(ops::linear(&self.mlm_transform, hidden)));
        h.matmul(word.transpose()) + self.mlm_bias.val().unsqueeze_dim(0)
    }

    /// Reconstructed region features.
    ///
    /// # Shapes
    /// - `hidden`: `[r, visual_hidden]` -> `[r, feature_dim]`
    pub fn region_features(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        ops::linear(&self.mrm_feature, hidden)
    }

    /// Detector-class logits, when the config has region classes.
    ///
    /// # Shapes
    /// - `hidden`: `[r, visual_hidden]` -> `[r, classes]`
    pub fn region_class_logits(&self, hidden: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        self.mrm_classes.as_ref().map(|l| ops::linear(l, hidden))
    }

    /// Pooled `[CLS]` states projected into the shared space and L2-normalised.
    ///
    /// # Shapes
    /// - `cls`: `[k, hidden]` -> `[k, pooled]`
    pub fn text_embedding(&self, cls: Tensor<B, 2>) -> Tensor<B, 2> {
        l2_normalize(ops::linear(&self.project_text, cls))
    }

    /// Pooled `[IMG]` states projected into the shared space and L2-normalised.
    ///
    /// # Shapes
    /// - `img`: `[k, visual_hidden]` -> `[k, pooled]`
    pub fn image_embedding(&self, img: Tensor<B, 2>) -> Tensor<B, 2> {
        l2_normalize(ops::linear(&self.project_image, img))
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
        let t = relu(ops::linear(&self.itm_text, cls));
        let v = relu(ops::linear(&self.itm_image, img));
        let k = t.dims()[0];
        ops::linear(&self.itm, t * v).reshape([k])
    }
}
