//! The forward functions the blocks call in place of burn's: on the CPU backend the fused
//! kernels of [`super::cpu`], elsewhere burn's own operations.

use burn::nn::{Dropout, Linear};
use burn::prelude::*;

/// `layer.forward(x)` with every leading dimension folded into one: burn 0.21 multiplies a
/// `[batch, len, d_in]` input by the weight as `batch` separate products (the CPU backend packs
/// the weight once per product, and the weight's gradient is `batch` full matrices summed
/// afterwards); folded, it is one `[batch * len, d_in] x [d_in, d_out]` product each way.
/// On the CPU backends the product is one fused op with the bias ([`super::cpu`]: the
/// transposed products of the backward read their operands in place, where burn copies
/// them). The result is the same.
///
/// # Shapes
/// - `x`: `[..., d_in]` -> `[..., d_out]`
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let d_out = layer.weight.dims()[1];
    let x2: Tensor<B, 2> = x.reshape([rows, dims[D - 1]]);
    let y = match &layer.bias {
        Some(bias) => match super::cpu::linear(x2, layer.weight.val(), bias.val()) {
            Ok(y) => y,
            Err((x2, _, _)) => layer.forward(x2),
        },
        None => layer.forward(x2),
    };
    let mut out = dims;
    out[D - 1] = d_out;
    y.reshape(out)
}

/// GELU, exact (erf) form; on the CPU backends the fused kernel of [`super::cpu`].
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    super::cpu::gelu(x).unwrap_or_else(burn::tensor::activation::gelu)
}

/// The attention weights `softmax(scores * scale + bias)` over the keys; the bias (the
/// attention mask) is a constant. On the CPU backends one fused pass each way.
///
/// # Shapes
/// - `scores`: `[batch, heads, lq, lk]`, `bias`: `[batch or 1, heads or 1, lq or 1, lk]`
pub fn attention_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    scale: f64,
    bias: Tensor<B, 4>,
) -> Tensor<B, 4> {
    match super::cpu::attention_softmax(scores, scale as f32, bias) {
        Ok(p) => p,
        Err((scores, bias)) => {
            burn::tensor::activation::softmax(scores.mul_scalar(scale) + bias, 3)
        }
    }
}

/// Multi-head attention of the projected queries `q` over keys `k` and values `v`:
/// `softmax(Q K^T / sqrt(d) + bias)` with `dropout` on the weights, times `V`, per head.
/// On the CPU backends one fused op (no copies to split and join the heads); elsewhere
/// burn's operations.
///
/// # Shapes
/// - `q`: `[batch, lq, heads * d]`, `k` and `v`: `[batch, lk, heads * d]`
/// - `bias`: `[batch or 1, 1, lq or 1, lk]` -> `[batch, lq, heads * d]`
pub fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Tensor<B, 4>,
    heads: usize,
    dropout: &Dropout,
) -> Tensor<B, 3> {
    let [b, lq, inner] = q.dims();
    let lk = k.dims()[1];
    let d = inner / heads.max(1);
    let scale = 1.0 / (d as f64).sqrt();
    match super::cpu::attention(q, k, v, bias, heads, scale as f32, dropout.prob) {
        Ok(context) => context,
        Err((q, k, v, bias)) => {
            let q = q.reshape([b, lq, heads, d]).swap_dims(1, 2);
            let k = k.reshape([b, lk, heads, d]).swap_dims(1, 2);
            let v = v.reshape([b, lk, heads, d]).swap_dims(1, 2);
            let weights = self::dropout(
                dropout,
                attention_softmax(q.matmul(k.swap_dims(2, 3)), scale, bias),
            );
            weights.matmul(v).swap_dims(1, 2).reshape([b, lq, inner])
        }
    }
}

/// `dropout.forward(x)`; on the CPU training backend with a mask drawn by [`DropoutRng`]
/// instead of burn's Bernoulli sampling through ChaCha (about a twentieth of the CPU
/// step's time went to drawing masks). Other backends draw on their device as before.
pub fn dropout<B: Backend, const D: usize>(dropout: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    if dropout.prob <= 0.0 || !super::cpu::is_cpu_autodiff::<B>() {
        return dropout.forward(x);
    }
    let shape = x.shape();
    let mask = DropoutRng::mask(shape.num_elements(), dropout.prob);
    let mask = Tensor::<B, D>::from_data(TensorData::new(mask, shape), &x.device());
    x * mask
}

/// The random numbers of [`dropout`] on the CPU: xoshiro256++ behind a lock, seeded by
/// [`seed_dropout`] with the trainer's seed (as the backend's own generator is), so a run
/// is as reproducible as before.
pub struct DropoutRng;

static DROPOUT_STATE: std::sync::Mutex<[u64; 4]> =
    std::sync::Mutex::new(seed_state(0x5EED_0FD1_2090_17AB));

const fn splitmix(z: u64) -> u64 {
    let z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const fn seed_state(seed: u64) -> [u64; 4] {
    let a = splitmix(seed);
    let b = splitmix(a);
    let c = splitmix(b);
    let d = splitmix(c);
    [a, b, c, d | 1]
}

/// Seeds the CPU dropout masks (the trainer calls it wherever it seeds the backend).
pub fn seed_dropout(seed: u64) {
    *DROPOUT_STATE.lock().unwrap_or_else(|e| e.into_inner()) = seed_state(seed);
}

impl DropoutRng {
    fn next(s: &mut [u64; 4]) -> u64 {
        let out = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// `n` values, each `1 / (1 - prob)` with probability `1 - prob` and 0 otherwise
    /// (16 random bits per value), from the shared generator.
    pub fn mask(n: usize, prob: f64) -> Vec<f32> {
        Self::fill(
            &mut DROPOUT_STATE.lock().unwrap_or_else(|e| e.into_inner()),
            n,
            prob,
        )
    }

    fn fill(state: &mut [u64; 4], n: usize, prob: f64) -> Vec<f32> {
        let keep = 1.0 - prob;
        let threshold = (keep * 65536.0).round() as u32;
        let value = (1.0 / keep) as f32;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let r = Self::next(state);
            for k in 0..4 {
                if out.len() == n {
                    break;
                }
                let bits = ((r >> (16 * k)) & 0xFFFF) as u32;
                out.push(if bits < threshold { value } else { 0.0 });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_masks_keep_their_share_scaled_and_repeat_from_a_seed() {
        let draw = |seed: u64| DropoutRng::fill(&mut seed_state(seed), 200_000, 0.1);
        let (a, b, c) = (draw(7), draw(7), draw(8));
        assert_eq!(a, b, "the same seed draws the same mask");
        assert_ne!(a, c);
        let kept = a.iter().filter(|&&v| v > 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.9).abs() < 0.003, "kept {kept}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // No pattern within a draw of 64 bits: each of its four values keeps 90%.
        for k in 0..4 {
            let lane = a.iter().skip(k).step_by(4).filter(|&&v| v > 0.0).count() as f64
                / (a.len() / 4) as f64;
            assert!((lane - 0.9).abs() < 0.006, "lane {k} kept {lane}");
        }
    }
}
