//! Layer normalisation over the last dimension, with the fused CPU kernel of [`super::cpu`].
//!
//! The module has burn's `LayerNorm` fields (`gamma`, `beta`, `epsilon`), so its record and
//! parameter names are those of burn's module: checkpoints and exports are unchanged. It
//! exists because burn's keeps the epsilon private, which the fused kernel needs.

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;

use super::cpu;

/// Configuration of a [`LayerNorm`] of width `d_model`.
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// Width of the normalised (last) dimension.
    pub d_model: usize,
    /// Added to the variance before the square root.
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

impl LayerNormConfig {
    /// The layer with gamma 1 and beta 0.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNorm {
            gamma: Initializer::Ones.init([self.d_model], device),
            beta: Some(Initializer::Zeros.init([self.d_model], device)),
            epsilon: self.epsilon,
        }
    }
}

/// `(x - mean) / sqrt(var + epsilon) * gamma + beta` over the last dimension.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale.
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift.
    pub beta: Option<Param<Tensor<B, 1>>>,
    epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// # Shapes
    /// - `x`: `[..., d_model]` -> `[..., d_model]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let gamma = self.gamma.val();
        let beta = self.beta.as_ref().map(|b| b.val());
        match cpu::layer_norm(x, gamma, beta, self.epsilon) {
            Ok(y) => y,
            Err((x, gamma, beta)) => Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
                x.into_primitive().tensor(),
                gamma.into_primitive().tensor(),
                beta.map(|b| b.into_primitive().tensor()),
                self.epsilon,
            ))),
        }
    }
}
