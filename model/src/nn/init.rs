//! Weight initialisation: normal(0, std) for matrices, zeros for biases (UNIMO uses a
//! truncated normal with std 0.02; the truncation at 2 std changes almost nothing).

use burn::module::Initializer;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

/// A linear layer initialised with normal(0, `std`) weights and zero bias.
pub fn linear<B: Backend>(d_in: usize, d_out: usize, std: f64, device: &B::Device) -> Linear<B> {
    let mut layer = LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    if let Some(bias) = layer.bias.take() {
        layer.bias = Some(bias.map(|b| b.zeros_like()));
    }
    layer
}
