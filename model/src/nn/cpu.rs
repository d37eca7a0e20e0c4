//! Fused kernels for the CPU backend (burn's ndarray), each with its own backward under
//! autodiff: GELU, layer norm and the attention softmax.
//!
//! burn 0.21 builds these from element-wise primitives: under autodiff a layer norm is nine
//! recorded operations forward and as many backward, each allocating its output; GELU's
//! backward is twelve (and differentiates the tanh approximation although the forward is the
//! exact erf form); a softmax five. Here each is one pass over its rows forward and one
//! backward, over rayon's pool when the tensor is large enough to split. The GPU backends
//! keep burn's operations, which their fusion compiles into few kernels.
//!
//! [`super::ops`] chooses: these functions take the tensor when its backend is the CPU's
//! (`Autodiff<NdArray>` for training, `NdArray` for inference) and its values are `f32`,
//! and give it back otherwise.

use std::any::Any;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn_ndarray::NdArrayTensor;
use ndarray::{ArcArray, IxDyn};
use rayon::prelude::*;

/// The CPU inference backend.
pub(crate) type Inner = NdArray;
/// The CPU training backend ([`crate::backend::CpuBackend`]).
pub(crate) type Ad = Autodiff<Inner>;

type AdPrimitive = <Ad as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

/// Below this many elements a kernel runs on the calling thread (splitting costs more).
const PARALLEL_ELEMENTS: usize = 1 << 14;

/// `t` as a `U` when `T` is `U`.
fn cast<T: 'static, U: 'static>(t: T) -> Result<U, T> {
    let mut slot = Some(t);
    if let Some(u) = (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>() {
        return Ok(u.take().expect("set above"));
    }
    Err(slot.expect("not taken"))
}

/// `t` as a `U`, where the caller has checked that `T` is `U`.
fn same<T: 'static, U: 'static>(t: T) -> U {
    match cast(t) {
        Ok(u) => u,
        Err(_) => unreachable!("the backend type was checked"),
    }
}

/// Whether `B` is the CPU training backend.
pub(crate) fn is_cpu_autodiff<B: Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<Ad>()
}

/// The values of a CPU tensor as a standard-layout array (shared, not copied, when it
/// already is one), or `None` when they are not `f32`.
fn values(t: &NdArrayTensor) -> Option<ArcArray<f32, IxDyn>> {
    match t {
        NdArrayTensor::F32(storage) => {
            let a = storage.clone().into_shared();
            Some(if a.is_standard_layout() {
                a
            } else {
                a.as_standard_layout().into_owned().into_shared()
            })
        }
        _ => None,
    }
}

fn slice(a: &ArcArray<f32, IxDyn>) -> &[f32] {
    a.as_slice().expect("standard layout")
}

fn tensor(shape: &[usize], v: Vec<f32>) -> NdArrayTensor {
    NdArrayTensor::from(
        ArcArray::from_shape_vec(IxDyn(shape), v).expect("shape matches the values"),
    )
}

/// Rows per parallel task for `len` values in rows of `row`: all of them (one task on the
/// calling thread) when there is too little work to split.
fn block_rows(len: usize, row: usize) -> usize {
    let rows = (len / row.max(1)).max(1);
    if len < PARALLEL_ELEMENTS {
        return rows;
    }
    rows.div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1)
}

/// Runs `f(first_row, block)` over blocks of whole rows of length `row` of `out`, in
/// parallel when there is enough work.
fn rows_mut(out: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let rows = out.len() / row.max(1);
    let per = block_rows(out.len(), row);
    if per >= rows {
        f(0, out);
        return;
    }
    out.par_chunks_mut(per * row)
        .enumerate()
        .for_each(|(i, chunk)| f(i * per, chunk));
}

/// A float tensor of the CPU training backend.
fn ad_float<const D: usize>(t: Tensor<Ad, D>) -> AdPrimitive {
    t.into_primitive().tensor()
}

fn from_ad<const D: usize>(p: AdPrimitive) -> Tensor<Ad, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn inner_float<const D: usize>(t: Tensor<Inner, D>) -> NdArrayTensor {
    t.into_primitive().tensor()
}

fn from_inner<const D: usize>(p: NdArrayTensor) -> Tensor<Inner, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

// ---------------------------------------------------------------------------------------
// GELU (exact, erf form)

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi)
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// erf(x) to about 1.5e-7 absolute (Abramowitz and Stegun 7.1.26), one `exp` per value.
#[cfg(test)]
fn erf(x: f32) -> f32 {
    erf_given_exp(x, (-x * x).exp())
}

/// erf(x) given `exp(-x^2)`.
#[inline]
fn erf_given_exp(x: f32, exp_neg_sq: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * exp_neg_sq).copysign(x)
}

/// The standard normal's distribution and density at `v`, sharing one `exp`.
#[inline]
fn normal_cdf_pdf(v: f32) -> (f32, f32) {
    let e = (-0.5 * v * v).exp();
    (
        0.5 * (1.0 + erf_given_exp(v * FRAC_1_SQRT_2, e)),
        FRAC_1_SQRT_2PI * e,
    )
}

fn gelu_forward(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    rows_mut(&mut y, 1, |first, out| {
        for (o, &v) in out.iter_mut().zip(&x[first..]) {
            *o = v * normal_cdf_pdf(v).0;
        }
    });
    y
}

fn gelu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0; x.len()];
    rows_mut(&mut dx, 1, |first, out| {
        for ((o, &v), &g) in out.iter_mut().zip(&x[first..]).zip(&grad[first..]) {
            let (cdf, pdf) = normal_cdf_pdf(v);
            *o = g * (cdf + v * pdf);
        }
    });
    dx
}

#[derive(Debug)]
struct Gelu;

impl Backward<Inner, 1> for Gelu {
    type State = NdArrayTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Inner>(&ops.node);
        let [parent] = ops.parents;
        let Some(parent) = parent else { return };
        let x = values(&ops.state).expect("f32 state");
        let g = values(&grad).expect("f32 gradient");
        let dx = gelu_backward(slice(&x), slice(&g));
        grads.register::<Inner>(parent.id, tensor(x.shape(), dx));
    }
}

fn gelu_inner(x: &NdArrayTensor) -> Option<NdArrayTensor> {
    let a = values(x)?;
    Some(tensor(a.shape(), gelu_forward(slice(&a))))
}

/// GELU on the CPU backends; `Err(x)` for any other.
pub(crate) fn gelu<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let x = match cast::<Tensor<B, D>, Tensor<Ad, D>>(x) {
        Ok(x) => {
            let p = ad_float(x);
            let Some(y) = gelu_inner(&p.primitive) else {
                return Err(same(from_ad::<D>(p)));
            };
            let out = match Gelu
                .prepare::<NoCheckpointing>([p.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(p.primitive.clone(), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            return Ok(same(from_ad::<D>(out)));
        }
        Err(x) => x,
    };
    match cast::<Tensor<B, D>, Tensor<Inner, D>>(x) {
        Ok(x) => {
            let p = inner_float(x);
            let out = match gelu_inner(&p) {
                Some(y) => from_inner::<D>(y),
                None => burn::tensor::activation::gelu(from_inner::<D>(p)),
            };
            Ok(same(out))
        }
        Err(x) => Err(x),
    }
}

// ---------------------------------------------------------------------------------------
// Layer norm over the last dimension

/// Forward: the output, the normalised input and each row's 1/std.
fn layer_norm_forward(
    x: &[f32],
    n: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = x.len() / n;
    let mut y = vec![0.0; x.len()];
    let mut xhat = vec![0.0; x.len()];
    let mut rstd = vec![0.0; rows];
    let per = block_rows(x.len(), n);
    type Block<'a> = (usize, ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]));
    let work = |(block, ((y, h), s)): Block<'_>| {
        for (r, s) in s.iter_mut().enumerate() {
            let row = block * per + r;
            let xi = &x[row * n..(row + 1) * n];
            let mean = xi.iter().sum::<f32>() / n as f32;
            let var = xi.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            *s = 1.0 / (var + eps).sqrt();
            let (yr, hr) = (&mut y[r * n..(r + 1) * n], &mut h[r * n..(r + 1) * n]);
            for ((((yo, ho), v), g), b) in yr
                .iter_mut()
                .zip(hr.iter_mut())
                .zip(xi)
                .zip(gamma)
                .zip(beta)
            {
                *ho = (v - mean) * *s;
                *yo = *ho * g + b;
            }
        }
    };
    if per < rows {
        y.par_chunks_mut(per * n)
            .zip(xhat.par_chunks_mut(per * n))
            .zip(rstd.par_chunks_mut(per))
            .enumerate()
            .for_each(work);
    } else {
        y.chunks_mut(per * n)
            .zip(xhat.chunks_mut(per * n))
            .zip(rstd.chunks_mut(per))
            .enumerate()
            .for_each(work);
    }
    (y, xhat, rstd)
}

/// Backward: the input's gradient, and the sums over rows of `grad * xhat` (gamma's
/// gradient) and of `grad` (beta's).
fn layer_norm_backward(
    grad: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    gamma: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = gamma.len();
    let mut dx = vec![0.0; grad.len()];
    rows_mut(&mut dx, n, |first, out| {
        let mut gg = vec![0.0f32; n];
        for (r, o) in out.chunks_mut(n).enumerate() {
            let row = first + r;
            let g = &grad[row * n..(row + 1) * n];
            let h = &xhat[row * n..(row + 1) * n];
            let (mut a, mut b) = (0.0f32, 0.0f32);
            for (((q, g), w), h) in gg.iter_mut().zip(g).zip(gamma).zip(h) {
                *q = g * w;
                a += *q;
                b += *q * h;
            }
            let (a, b) = (a / n as f32, b / n as f32);
            let s = rstd[row];
            for ((o, q), h) in o.iter_mut().zip(&gg).zip(h) {
                *o = s * (q - a - h * b);
            }
        }
    });
    let rows = grad.len() / n;
    let per = block_rows(grad.len(), n).max(rows.div_ceil(rayon::current_num_threads().max(1)));
    let (dgamma, dbeta) = (0..rows.div_ceil(per))
        .into_par_iter()
        .map(|blk| {
            let (mut dg, mut db) = (vec![0.0f32; n], vec![0.0f32; n]);
            for row in blk * per..((blk + 1) * per).min(rows) {
                let g = &grad[row * n..(row + 1) * n];
                let h = &xhat[row * n..(row + 1) * n];
                for (((dg, db), g), h) in dg.iter_mut().zip(db.iter_mut()).zip(g).zip(h) {
                    *dg += g * h;
                    *db += g;
                }
            }
            (dg, db)
        })
        .reduce(
            || (vec![0.0f32; n], vec![0.0f32; n]),
            |(mut a, mut b), (c, d)| {
                a.iter_mut().zip(c).for_each(|(a, c)| *a += c);
                b.iter_mut().zip(d).for_each(|(b, d)| *b += d);
                (a, b)
            },
        );
    (dx, dgamma, dbeta)
}

#[derive(Debug, Clone)]
struct LayerNormState {
    xhat: NdArrayTensor,
    rstd: Arc<Vec<f32>>,
    gamma: NdArrayTensor,
}

#[derive(Debug)]
struct LayerNorm;

impl Backward<Inner, 3> for LayerNorm {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Inner>(&ops.node);
        let g = values(&grad).expect("f32 gradient");
        let xhat = values(&ops.state.xhat).expect("f32 state");
        let gamma = values(&ops.state.gamma).expect("f32 gamma");
        let (dx, dgamma, dbeta) =
            layer_norm_backward(slice(&g), slice(&xhat), &ops.state.rstd, slice(&gamma));
        let [x, gamma_node, beta_node] = ops.parents;
        let n = dgamma.len();
        if let Some(node) = x {
            grads.register::<Inner>(node.id, tensor(g.shape(), dx));
        }
        if let Some(node) = gamma_node {
            grads.register::<Inner>(node.id, tensor(&[n], dgamma));
        }
        if let Some(node) = beta_node {
            grads.register::<Inner>(node.id, tensor(&[n], dbeta));
        }
    }
}

/// The forward on CPU tensors: output, normalised input, 1/std; `None` if not `f32`.
fn layer_norm_inner(
    x: &NdArrayTensor,
    gamma: &NdArrayTensor,
    beta: Option<&NdArrayTensor>,
    eps: f64,
) -> Option<(NdArrayTensor, NdArrayTensor, Vec<f32>)> {
    let xa = values(x)?;
    let ga = values(gamma)?;
    let ba = match beta {
        Some(b) => Some(values(b)?),
        None => None,
    };
    let n = ga.len();
    if n == 0 || *xa.shape().last()? != n {
        return None;
    }
    let (y, xhat, rstd) =
        layer_norm_forward(slice(&xa), n, slice(&ga), slice(ba.as_ref()?), eps as f32);
    Some((tensor(xa.shape(), y), tensor(xa.shape(), xhat), rstd))
}

/// Layer norm over the last dimension on the CPU backends; `Err` gives the inputs back
/// for any other backend, or without a bias.
#[allow(clippy::type_complexity)]
pub(crate) fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    eps: f64,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, 1>, Option<Tensor<B, 1>>)> {
    let Some(beta) = beta else {
        return Err((x, gamma, None));
    };
    if is_cpu_autodiff::<B>() {
        let x = ad_float(same::<_, Tensor<Ad, D>>(x));
        let gamma = ad_float(same::<_, Tensor<Ad, 1>>(gamma));
        let beta = ad_float(same::<_, Tensor<Ad, 1>>(beta));
        let Some((y, xhat, rstd)) =
            layer_norm_inner(&x.primitive, &gamma.primitive, Some(&beta.primitive), eps)
        else {
            return Err((
                same(from_ad::<D>(x)),
                same(from_ad::<1>(gamma)),
                Some(same(from_ad::<1>(beta))),
            ));
        };
        let out = match LayerNorm
            .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                LayerNormState {
                    xhat,
                    rstd: Arc::new(rstd),
                    gamma: gamma.primitive.clone(),
                },
                y,
            ),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        return Ok(same(from_ad::<D>(out)));
    }
    match cast::<Tensor<B, D>, Tensor<Inner, D>>(x) {
        Ok(x) => {
            let x = inner_float(x);
            let g = inner_float(same::<_, Tensor<Inner, 1>>(gamma));
            let b = inner_float(same::<_, Tensor<Inner, 1>>(beta));
            let out = match layer_norm_inner(&x, &g, Some(&b), eps) {
                Some((y, _, _)) => y,
                None => {
                    <Inner as burn::tensor::ops::ModuleOps<Inner>>::layer_norm(x, g, Some(b), eps)
                }
            };
            Ok(same(from_inner::<D>(out)))
        }
        Err(x) => Err((x, gamma, Some(beta))),
    }
}

// ---------------------------------------------------------------------------------------
// Attention softmax: softmax(scores * scale + bias) over the last dimension

/// Offsets of the bias row for each `(batch, head, query)` row of the scores, with the
/// bias broadcast over any of its leading dimensions of size 1.
fn bias_row(scores: &[usize], bias: &[usize], row: usize) -> usize {
    let (h, lq) = (scores[1], scores[2]);
    let (bi, rest) = (row / (h * lq), row % (h * lq));
    let (hi, qi) = (rest / lq, rest % lq);
    let b = if bias[0] == 1 { 0 } else { bi };
    let hh = if bias[1] == 1 { 0 } else { hi };
    let q = if bias[2] == 1 { 0 } else { qi };
    ((b * bias[1] + hh) * bias[2] + q) * bias[3]
}

fn softmax_forward(
    s: &[f32],
    shape: &[usize],
    bias: &[f32],
    bias_shape: &[usize],
    scale: f32,
) -> Vec<f32> {
    let lk = shape[3];
    let mut p = vec![0.0; s.len()];
    rows_mut(&mut p, lk, |first, out| {
        for (r, o) in out.chunks_mut(lk).enumerate() {
            let row = first + r;
            let z = &s[row * lk..(row + 1) * lk];
            let bo = bias_row(shape, bias_shape, row);
            let b = &bias[bo..bo + lk];
            let mut max = f32::NEG_INFINITY;
            for ((o, z), b) in o.iter_mut().zip(z).zip(b) {
                *o = z * scale + b;
                max = max.max(*o);
            }
            let mut sum = 0.0;
            for o in o.iter_mut() {
                *o = (*o - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            for o in o.iter_mut() {
                *o *= inv;
            }
        }
    });
    p
}

fn softmax_backward(p: &[f32], grad: &[f32], lk: usize, scale: f32) -> Vec<f32> {
    let mut ds = vec![0.0; p.len()];
    rows_mut(&mut ds, lk, |first, out| {
        for (r, o) in out.chunks_mut(lk).enumerate() {
            let row = first + r;
            let pr = &p[row * lk..(row + 1) * lk];
            let gr = &grad[row * lk..(row + 1) * lk];
            let dot: f32 = pr.iter().zip(gr).map(|(p, g)| p * g).sum();
            for ((o, p), g) in o.iter_mut().zip(pr).zip(gr) {
                *o = scale * p * (g - dot);
            }
        }
    });
    ds
}

#[derive(Debug, Clone)]
struct SoftmaxState {
    p: NdArrayTensor,
    scale: f32,
}

#[derive(Debug)]
struct AttentionSoftmax;

impl Backward<Inner, 1> for AttentionSoftmax {
    type State = SoftmaxState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Inner>(&ops.node);
        let [parent] = ops.parents;
        let Some(parent) = parent else { return };
        let p = values(&ops.state.p).expect("f32 state");
        let g = values(&grad).expect("f32 gradient");
        let lk = p.shape()[3];
        let ds = softmax_backward(slice(&p), slice(&g), lk, ops.state.scale);
        grads.register::<Inner>(parent.id, tensor(p.shape(), ds));
    }
}

fn softmax_inner(
    scores: &NdArrayTensor,
    bias: &NdArrayTensor,
    scale: f32,
) -> Option<NdArrayTensor> {
    let s = values(scores)?;
    let b = values(bias)?;
    let (ss, bs) = (s.shape(), b.shape());
    let broadcasts = (0..4).all(|i| bs[i] == ss[i] || bs[i] == 1) && bs[3] == ss[3];
    if ss.len() != 4 || bs.len() != 4 || !broadcasts {
        return None;
    }
    Some(tensor(
        ss,
        softmax_forward(slice(&s), ss, slice(&b), bs, scale),
    ))
}

/// `softmax(scores * scale + bias, 3)` on the CPU backends, the bias taken as a constant;
/// `Err` gives the inputs back for any other backend or a bias that needs a gradient.
#[allow(clippy::type_complexity)]
pub(crate) fn attention_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    scale: f32,
    bias: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
    if is_cpu_autodiff::<B>() {
        if bias.is_require_grad() {
            return Err((scores, bias));
        }
        let s = ad_float(same::<_, Tensor<Ad, 4>>(scores));
        let b = ad_float(same::<_, Tensor<Ad, 4>>(bias));
        let Some(p) = softmax_inner(&s.primitive, &b.primitive, scale) else {
            return Err((same(from_ad::<4>(s)), same(from_ad::<4>(b))));
        };
        let out = match AttentionSoftmax
            .prepare::<NoCheckpointing>([s.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                SoftmaxState {
                    p: p.clone(),
                    scale,
                },
                p,
            ),
            OpsKind::UnTracked(prep) => prep.finish(p),
        };
        return Ok(same(from_ad::<4>(out)));
    }
    match cast::<Tensor<B, 4>, Tensor<Inner, 4>>(scores) {
        Ok(s) => {
            let b = same::<_, Tensor<Inner, 4>>(bias);
            let (sp, bp) = (inner_float(s), inner_float(b));
            match softmax_inner(&sp, &bp, scale) {
                Some(p) => Ok(same(from_inner::<4>(p))),
                None => Err((same(from_inner::<4>(sp)), same(from_inner::<4>(bp)))),
            }
        }
        Err(s) => Err((s, bias)),
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::softmax;
    use burn::tensor::{Distribution, Tolerance};

    use super::*;

    /// `Tensor::random` values of a fixed seed.
    fn random<const D: usize>(shape: [usize; D], seed: u64) -> TensorData {
        <Inner as Backend>::seed(&Default::default(), seed);
        Tensor::<Inner, D>::random(shape, Distribution::Normal(0.0, 1.5), &Default::default())
            .into_data()
    }

    fn leaf<const D: usize>(data: &TensorData) -> Tensor<Ad, D> {
        Tensor::<Ad, D>::from_data(data.clone(), &Default::default()).require_grad()
    }

    fn close<const D: usize>(a: Tensor<Inner, D>, b: Tensor<Inner, D>, what: &str) {
        let (a, b) = (a.into_data(), b.into_data());
        assert_eq!(a.shape, b.shape, "{what}: shapes");
        // f32 rounding of sums over a row (and over 600 rows for gamma and beta) in another order.
        a.assert_approx_eq::<f32>(&b, Tolerance::absolute(1e-4));
    }

    /// The largest difference, relative to the larger of 1 and the exact value's magnitude.
    fn relative_error(got: &[f32], exact: &[f32]) -> f32 {
        assert_eq!(got.len(), exact.len());
        got.iter()
            .zip(exact)
            .map(|(g, e)| (g - e).abs() / e.abs().max(1.0))
            .fold(0.0, f32::max)
    }

    /// The decomposition burn 0.21 records under autodiff (its default `layer_norm`).
    fn layer_norm_reference<const D: usize>(
        x: Tensor<Ad, D>,
        g: Tensor<Ad, 1>,
        b: Tensor<Ad, 1>,
        eps: f64,
    ) -> Tensor<Ad, D> {
        let mean = x.clone().mean_dim(D - 1);
        let c = x - mean;
        let var = (c.clone() * c.clone()).mean_dim(D - 1);
        c / (var + eps).sqrt() * g.unsqueeze::<D>() + b.unsqueeze::<D>()
    }

    fn gelu_reference<const D: usize>(x: Tensor<Ad, D>) -> Tensor<Ad, D> {
        x.clone() * (x / std::f64::consts::SQRT_2).erf().add_scalar(1.0) * 0.5
    }

    /// Layer norm and its gradients in f64 on the host: output, dx, dgamma, dbeta.
    fn layer_norm_f64(
        x: &[f32],
        n: usize,
        g: &[f32],
        b: &[f32],
        w: &[f32],
        eps: f64,
    ) -> [Vec<f32>; 4] {
        let (mut y, mut dx, mut dg, mut db) = (vec![], vec![], vec![0.0f64; n], vec![0.0f64; n]);
        for (xr, wr) in x.chunks(n).zip(w.chunks(n)) {
            let xr: Vec<f64> = xr.iter().map(|&v| v as f64).collect();
            let mean = xr.iter().sum::<f64>() / n as f64;
            let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let s = 1.0 / (var + eps).sqrt();
            let h: Vec<f64> = xr.iter().map(|v| (v - mean) * s).collect();
            let q: Vec<f64> = (0..n).map(|i| wr[i] as f64 * g[i] as f64).collect();
            let a = q.iter().sum::<f64>() / n as f64;
            let c = q.iter().zip(&h).map(|(q, h)| q * h).sum::<f64>() / n as f64;
            for i in 0..n {
                y.push((h[i] * g[i] as f64 + b[i] as f64) as f32);
                dx.push((s * (q[i] - a - h[i] * c)) as f32);
                dg[i] += wr[i] as f64 * h[i];
                db[i] += wr[i] as f64;
            }
        }
        [
            y,
            dx,
            dg.into_iter().map(|v| v as f32).collect(),
            db.into_iter().map(|v| v as f32).collect(),
        ]
    }

    /// Forward values and gradients of the fused layer norm against the same computed in
    /// f64, on a small tensor (one thread) and a large one (split over rayon); burn's
    /// decomposition beside it, to a looser bound.
    #[test]
    fn layer_norm_matches_an_f64_reference_forward_and_backward() {
        for (rows, n) in [(3, 8), (300, 128)] {
            let (xd, gd, bd, wd) = (
                random([2, rows, n], 1),
                random([n], 2),
                random([n], 3),
                random([2, rows, n], 4),
            );
            let v = |d: &TensorData| d.to_vec::<f32>().expect("f32");
            let exact = layer_norm_f64(&v(&xd), n, &v(&gd), &v(&bd), &v(&wd), 1e-5);
            let w = Tensor::<Ad, 3>::from_data(wd.clone(), &Default::default());
            let run = |fused: bool| {
                let (x, g, b) = (leaf::<3>(&xd), leaf::<1>(&gd), leaf::<1>(&bd));
                let y = if fused {
                    layer_norm(x.clone(), g.clone(), Some(b.clone()), 1e-5)
                        .unwrap_or_else(|_| panic!("the CPU kernel"))
                } else {
                    layer_norm_reference(x.clone(), g.clone(), b.clone(), 1e-5)
                };
                let grads = (y.clone() * w.clone()).sum().backward();
                let out = |t: Tensor<Inner, 3>| t.into_data().to_vec::<f32>().expect("f32");
                let par = |t: Tensor<Inner, 1>| t.into_data().to_vec::<f32>().expect("f32");
                [
                    out(y.inner()),
                    out(x.grad(&grads).expect("x")),
                    par(g.grad(&grads).expect("gamma")),
                    par(b.grad(&grads).expect("beta")),
                ]
            };
            // The decomposition's dx is the less exact (measured: 3.4e-4 at 600 rows).
            for (name, got, bound) in [
                ("fused", run(true), 2e-5),
                ("burn's decomposition", run(false), 1e-3),
            ] {
                for (k, what) in ["output", "dx", "dgamma", "dbeta"].iter().enumerate() {
                    let err = relative_error(&got[k], &exact[k]);
                    assert!(
                        err < bound,
                        "{name} {what} ({rows} rows): error {err:.2e} against f64"
                    );
                }
            }
            // Inference (no autodiff) takes the same kernel.
            let x = Tensor::<Inner, 3>::from_data(xd.clone(), &Default::default());
            let g = Tensor::<Inner, 1>::from_data(gd.clone(), &Default::default());
            let b = Tensor::<Inner, 1>::from_data(bd.clone(), &Default::default());
            let inner =
                layer_norm(x, g, Some(b), 1e-5).unwrap_or_else(|_| panic!("the CPU kernel"));
            let err = relative_error(&inner.into_data().to_vec::<f32>().expect("f32"), &exact[0]);
            assert!(err < 2e-5, "inference output: error {err:.2e} against f64");
        }
    }

    /// Exact GELU and its exact derivative (burn's own backward differentiates the tanh
    /// approximation).
    #[test]
    fn gelu_matches_the_erf_form_forward_and_backward() {
        for len in [40, 40_000] {
            let (xd, wd) = (random([len], 5), random([len], 6));
            let w = Tensor::<Ad, 1>::from_data(wd, &Default::default());
            let run = |fused: bool| {
                let x = leaf::<1>(&xd);
                let y = if fused {
                    gelu(x.clone()).unwrap_or_else(|_| panic!("the CPU kernel"))
                } else {
                    gelu_reference(x.clone())
                };
                let grads = (y.clone() * w.clone()).sum().backward();
                (y.inner(), x.grad(&grads).expect("x"))
            };
            let (f, r) = (run(true), run(false));
            close(f.0, r.0, "output");
            close(f.1, r.1, "dx");
        }
        for x in [-6.0f32, -2.5, -1.0, -0.3, 0.0, 0.2, 0.9, 1.7, 3.0, 8.0] {
            let exact = libm_erf(x);
            assert!(
                (erf(x) - exact).abs() < 3e-7,
                "erf({x}) = {} against {exact}",
                erf(x)
            );
        }
    }

    /// erf by its Taylor series (exact enough for |x| <= 3) or 1 beyond.
    fn libm_erf(x: f32) -> f32 {
        let x = x as f64;
        if x.abs() > 3.5 {
            return x.signum() as f32;
        }
        let (mut term, mut sum, mut k) = (x, x, 0.0f64);
        while term.abs() > 1e-17 {
            k += 1.0;
            term *= -x * x / k;
            sum += term / (2.0 * k + 1.0);
        }
        (sum * 2.0 / std::f64::consts::PI.sqrt()) as f32
    }

    /// The attention softmax with a key-padding bias and a full per-query bias, against
    /// burn's softmax of the scaled, biased scores; the bias gets no gradient.
    #[test]
    fn attention_softmax_matches_softmax_of_scaled_biased_scores() {
        for (b, h, l) in [(2, 2, 5), (4, 2, 40)] {
            for bias_rows in [1, l] {
                let sd = random([b, h, l, l], 7);
                let wd = random([b, h, l, l], 8);
                let mut bias: Vec<f32> = random([b, 1, bias_rows, l], 9).to_vec().expect("f32");
                // Some blocked positions, as the masks have them (never a whole row).
                for (i, v) in bias.iter_mut().enumerate() {
                    if i % l != 0 && i % 3 == 0 {
                        *v = crate::attention_mask::BLOCKED;
                    }
                }
                let bias_data = TensorData::new(bias, [b, 1, bias_rows, l]);
                let w = Tensor::<Ad, 4>::from_data(wd, &Default::default());
                let run = |fused: bool| {
                    let s = leaf::<4>(&sd);
                    let bias = Tensor::<Ad, 4>::from_data(bias_data.clone(), &Default::default());
                    let p = if fused {
                        attention_softmax(s.clone(), 0.125, bias)
                            .unwrap_or_else(|_| panic!("the CPU kernel"))
                    } else {
                        softmax(s.clone().mul_scalar(0.125) + bias, 3)
                    };
                    let grads = (p.clone() * w.clone()).sum().backward();
                    (p.inner(), s.grad(&grads).expect("scores"))
                };
                let (f, r) = (run(true), run(false));
                close(f.0, r.0, "weights");
                close(f.1, r.1, "dscores");
            }
        }
    }

    /// Other backends' tensors come back untouched (here: a bias that wants a gradient).
    #[test]
    fn a_bias_with_a_gradient_is_left_to_burn() {
        let s = leaf::<4>(&random([1, 1, 2, 3], 1));
        let bias = leaf::<4>(&random([1, 1, 1, 3], 2));
        assert!(attention_softmax(s, 1.0, bias).is_err());
    }
}
