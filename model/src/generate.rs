//! Decoding with UNIMO's generation head (the tied token output trained by the seq2seq,
//! continuation and caption objectives): greedy and beam search over a cache of earlier
//! positions' keys and values, backend-generic.
//!
//! - Captioning: the prefix is `[IMG] v1..vk [CLS]` under the image-to-text mask (image rows
//!   see only image rows; each text token sees the image and the text up to itself); `[CLS]`
//!   predicts the first word.
//! - Text continuation: the prefix is `[CLS] prompt [SEP]` under the prefix-LM mask (the
//!   source sees the source); `[SEP]` predicts the first word of the continuation.
//!
//! Under both masks a position never attends to a later one, so the keys and values of
//! earlier positions never change as tokens are appended: they are computed once and each
//! new token costs one pass of a single position over the cache (O(T) attention) instead of a
//! re-encode of the whole sequence. [`DecodeOptions::use_cache`] `= false` re-encodes (for
//! benchmarks and tests).
//!
//! ViLBERT has no generation head (its text stream is trained with MLM only, bidirectionally):
//! every function here returns [`ModelError::Unsupported`] for it.

use burn::module::{AutodiffModule, Module};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;

use crate::attention_mask::{full_bias, MaskKind, MaskRow};
use crate::config::{Arch, ModelConfig};
use crate::error::ModelError;
use crate::example::VisualInput;
use crate::model::PretrainModel;
use crate::nn::transformer::EncoderCache;
use crate::plan::{ImageRows, Plan};
use crate::settings::TrainSettings;
use crate::trainer::Trainer;
use crate::unimo::UnimoBackbone;

/// The error for ViLBERT models.
pub const NO_GENERATION_HEAD: &str =
    "ViLBERT has no generation head: captioning and text generation need a model trained with arch = \"unimo\"";

/// How to decode.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOptions {
    /// Beam width (1 = greedy).
    pub beam: usize,
    /// Most tokens generated (`[SEP]` excluded); also bounded by the model's `max_text_len`.
    pub max_len: usize,
    /// Fewest tokens before `[SEP]` may end a hypothesis.
    pub min_len: usize,
    /// Finished hypotheses are ranked by `log p / length ^ length_penalty` (0 = raw sum).
    pub length_penalty: f32,
    /// No n-gram of this size occurs twice in an output (0 = off).
    pub no_repeat_ngram: usize,
    /// Reuse earlier positions' keys and values (false: re-encode the sequence every token).
    pub use_cache: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            beam: 1,
            max_len: 20,
            min_len: 1,
            length_penalty: 1.0,
            no_repeat_ngram: 3,
            use_cache: true,
        }
    }
}

/// A decoded output.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Generated token ids (no special tokens, no final `[SEP]`).
    pub ids: Vec<u32>,
    /// Sum of the log-probabilities of the tokens (the final `[SEP]` included when generated).
    pub log_prob: f32,
    /// True when the output ended with `[SEP]` (false: cut at the length limit).
    pub finished: bool,
}

/// The decoder's starting point.
struct Prefix {
    visual: Option<ImageRows>,
    text: Vec<u32>,
    kind: MaskKind,
}

fn backbone<'a, B: Backend>(model: &'a PretrainModel<B>, config: &ModelConfig) -> Result<&'a UnimoBackbone<B>, ModelError> {
    match (config.arch, model.unimo()) {
        (Arch::Unimo, Some(u)) => Ok(u),
        _ => Err(ModelError::Unsupported(NO_GENERATION_HEAD.into())),
    }
}

/// Captions `image`.
pub fn caption<B: Backend>(model: &PretrainModel<B>, image: &VisualInput, opts: &DecodeOptions) -> Result<Generated, ModelError> {
    let config = model.config();
    backbone(model, config)?;
    if let Some(problem) = image.problem(config.feature_dim) {
        return Err(ModelError::Input(problem));
    }
    let rows = Plan::clean_images(std::slice::from_ref(image), config)
        .pop()
        .flatten()
        .ok_or_else(|| ModelError::Input("the image has no usable rows".into()))?;
    let prefix = Prefix {
        visual: Some(rows),
        text: vec![config.special.cls],
        kind: MaskKind::ImageToText,
    };
    decode(model, config, &prefix, opts)
}

/// Continues a prompt given as token ids (`[CLS] w.. [SEP]` or bare words; ids outside the
/// vocabulary are an error). Long prompts keep their last words, leaving room for at least
/// one generated token.
pub fn continue_text<B: Backend>(model: &PretrainModel<B>, prompt: &[u32], opts: &DecodeOptions) -> Result<Generated, ModelError> {
    let config = model.config();
    backbone(model, config)?;
    let sp = config.special;
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= config.vocab_size) {
        return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary")));
    }
    let words: Vec<u32> = prompt.iter().copied().filter(|&id| !sp.contains(id)).collect();
    if words.is_empty() {
        return Err(ModelError::Input("the prompt has no words".into()));
    }
    let room = config.max_text_len.saturating_sub(3).max(1);
    let words = &words[words.len().saturating_sub(room)..];
    let mut text = Vec::with_capacity(words.len() + 2);
    text.push(sp.cls);
    text.extend_from_slice(words);
    text.push(sp.sep);
    let prefix = Prefix {
        kind: MaskKind::PrefixLm { source_len: text.len() },
        text,
        visual: None,
    };
    decode(model, config, &prefix, opts)
}

/// One hypothesis of the beam.
#[derive(Debug, Clone)]
struct Hyp {
    tokens: Vec<u32>,
    log_prob: f32,
}

/// Tokens that would repeat an n-gram of `tokens` of size `n`.
fn repeated_ngram_bans(tokens: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || tokens.len() + 1 < n {
        return Vec::new();
    }
    if n == 1 {
        return tokens.to_vec();
    }
    let prefix = &tokens[tokens.len() + 1 - n..];
    tokens
        .windows(n)
        .filter(|w| &w[..n - 1] == prefix)
        .map(|w| w[n - 1])
        .collect()
}

fn normalized(log_prob: f32, len: usize, penalty: f32) -> f32 {
    if penalty == 0.0 {
        log_prob
    } else {
        log_prob / (len.max(1) as f32).powf(penalty)
    }
}

/// Encoder inputs of `rows` copies of the prefix followed by each row's generated tokens.
struct Step<B: Backend> {
    visual: Option<(Tensor<B, 3>, Tensor<B, 3>)>,
    ids: Tensor<B, 2, Int>,
    text_start: usize,
    bias: Tensor<B, 4>,
}

fn visual_tensors<B: Backend>(rows: &ImageRows, copies: usize, feature_dim: usize, device: &B::Device) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let n = rows.rows();
    let mut feats = Vec::with_capacity(copies * n * feature_dim);
    let mut locs = Vec::with_capacity(copies * n * 5);
    for _ in 0..copies {
        feats.extend_from_slice(&rows.features[..n * feature_dim]);
        locs.extend(rows.locations.iter().flatten().copied());
    }
    (
        Tensor::from_data(TensorData::new(feats, [copies, n, feature_dim]), device),
        Tensor::from_data(TensorData::new(locs, [copies, n, 5]), device),
    )
}

/// The whole sequence (prefix and generated tokens) of every hypothesis, with its mask.
fn full_step<B: Backend>(prefix: &Prefix, hyps: &[Vec<u32>], config: &ModelConfig, device: &B::Device) -> Step<B> {
    let rows = hyps.len();
    let n = prefix.visual.as_ref().map_or(0, ImageRows::rows);
    let t = prefix.text.len() + hyps.first().map_or(0, Vec::len);
    let mut ids = Vec::with_capacity(rows * t);
    for h in hyps {
        ids.extend(prefix.text.iter().chain(h).map(|&id| id as i64));
    }
    let mask: Vec<MaskRow> = (0..rows).map(|_| MaskRow { visual: n, text: t, kind: prefix.kind }).collect();
    let l = n + t;
    Step {
        visual: prefix.visual.as_ref().map(|v| visual_tensors(v, rows, config.feature_dim, device)),
        ids: Tensor::from_data(TensorData::new(ids, [rows, t]), device),
        text_start: 0,
        bias: Tensor::<B, 3>::from_data(TensorData::new(full_bias(&mask, n, t), [rows, l, l]), device).reshape([rows, 1, l, l]),
    }
}

/// Log-probabilities of the next token after the last position of `step`, `[rows, vocab]`,
/// read back to the host.
fn next_log_probs<B: Backend>(
    unimo: &UnimoBackbone<B>,
    model: &PretrainModel<B>,
    step: Step<B>,
    cache: &mut EncoderCache<B>,
) -> Vec<Vec<f32>> {
    let hidden = unimo.forward_cached(step.visual, Some(step.ids), step.text_start, step.bias, cache);
    let [rows, len, width] = hidden.dims();
    let last = hidden.narrow(1, len - 1, 1).reshape([rows, width]);
    let logits = model.heads().token_logits(last, unimo.text.word.weight.val());
    let vocab = logits.dims()[1];
    let data: Vec<f32> = log_softmax(logits, 1).into_data().convert::<f32>().to_vec().unwrap_or_default();
    data.chunks(vocab.max(1)).map(<[f32]>::to_vec).collect()
}

/// Beam search (greedy at width 1) from `prefix`.
fn decode<B: Backend>(model: &PretrainModel<B>, config: &ModelConfig, prefix: &Prefix, opts: &DecodeOptions) -> Result<Generated, ModelError> {
    let unimo = backbone(model, config)?;
    let device = model
        .devices()
        .into_iter()
        .next()
        .ok_or_else(|| ModelError::State("the model has no parameters".into()))?;
    let beam = opts.beam.max(1);
    let t0 = prefix.text.len();
    // Token s sits at text position t0 + s once fed; the last fed one must be < max_text_len.
    let max_new = opts.max_len.min((config.max_text_len + 1).saturating_sub(t0));
    let sp = config.special;
    let banned_always = [sp.pad, sp.cls, sp.mask, sp.img];
    let mut cache = EncoderCache::new(unimo.num_layers());
    let mut alive = vec![Hyp { tokens: Vec::new(), log_prob: 0.0 }];
    let mut finished: Vec<(f32, Hyp)> = Vec::new();
    let mut log_probs = next_log_probs(unimo, model, full_step(prefix, &[Vec::new()], config, &device), &mut cache);
    for s in 0..max_new {
        // Candidates (score, parent, token), best first.
        let per_beam = 2 * beam;
        let mut candidates: Vec<(f32, usize, u32)> = Vec::with_capacity(alive.len() * per_beam);
        for (b, hyp) in alive.iter().enumerate() {
            let mut row = log_probs[b].clone();
            for &id in &banned_always {
                if let Some(v) = row.get_mut(id as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
            if hyp.tokens.len() < opts.min_len {
                row[sp.sep as usize] = f32::NEG_INFINITY;
            }
            for id in repeated_ngram_bans(&hyp.tokens, opts.no_repeat_ngram) {
                row[id as usize] = f32::NEG_INFINITY;
            }
            let mut idx: Vec<u32> = (0..row.len() as u32).collect();
            let k = per_beam.min(idx.len());
            if k < idx.len() {
                idx.select_nth_unstable_by(k, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
                idx.truncate(k);
            }
            candidates.extend(
                idx.into_iter()
                    .filter(|&id| row[id as usize].is_finite())
                    .map(|id| (hyp.log_prob + row[id as usize], b, id)),
            );
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut next = Vec::with_capacity(beam);
        let mut parents = Vec::with_capacity(beam);
        for (rank, &(score, parent, id)) in candidates.iter().enumerate() {
            if id == sp.sep {
                if rank < beam {
                    let hyp = Hyp { tokens: alive[parent].tokens.clone(), log_prob: score };
                    finished.push((normalized(score, hyp.tokens.len() + 1, opts.length_penalty), hyp));
                }
            } else if next.len() < beam {
                let mut tokens = alive[parent].tokens.clone();
                tokens.push(id);
                next.push(Hyp { tokens, log_prob: score });
                parents.push(parent);
            }
            if next.len() == beam && rank + 1 >= beam {
                break;
            }
        }
        alive = next;
        // Keep the `beam` best finished hypotheses; stop once none of the alive ones can
        // beat the worst of them (exact without a length penalty, since log-probabilities
        // only fall; with one, the heuristic of common beam search implementations).
        finished.sort_by(|a, b| b.0.total_cmp(&a.0));
        finished.truncate(beam);
        let settled = (beam == 1 && !finished.is_empty())
            || finished.len() >= beam
            && alive.iter().all(|h| normalized(h.log_prob, h.tokens.len() + 1, opts.length_penalty) <= finished[beam - 1].0);
        if settled || alive.is_empty() || s + 1 == max_new {
            break;
        }
        let rows = alive.len();
        let step = if opts.use_cache {
            let index: Vec<i64> = parents.iter().map(|&p| p as i64).collect();
            cache.select(Tensor::from_data(TensorData::new(index, [rows]), &device));
            let ids: Vec<i64> = alive.iter().map(|h| h.tokens[s] as i64).collect();
            let l = cache.len() + 1;
            Step {
                visual: None,
                ids: Tensor::from_data(TensorData::new(ids, [rows, 1]), &device),
                text_start: t0 + s,
                bias: Tensor::zeros([rows, 1, 1, l], &device),
            }
        } else {
            cache = EncoderCache::new(unimo.num_layers());
            let hyps: Vec<Vec<u32>> = alive.iter().map(|h| h.tokens.clone()).collect();
            full_step(prefix, &hyps, config, &device)
        };
        log_probs = next_log_probs(unimo, model, step, &mut cache);
    }
    let best_finished = finished
        .into_iter()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, h)| (h, true));
    let best = best_finished.or_else(|| {
        alive
            .into_iter()
            .max_by(|a, b| {
                normalized(a.log_prob, a.tokens.len(), opts.length_penalty)
                    .total_cmp(&normalized(b.log_prob, b.tokens.len(), opts.length_penalty))
            })
            .map(|h| (h, false))
    });
    let (hyp, finished) = best.unwrap_or((Hyp { tokens: Vec::new(), log_prob: 0.0 }, false));
    Ok(Generated { ids: hyp.tokens, log_prob: hyp.log_prob, finished })
}

/// Texts or images embedded per forward pass.
const EMBED_CHUNK: usize = 64;

/// A frozen copy of a model for inference (captioning, continuation, embeddings), detached
/// from training: what `unimod caption`/`generate` load and what the daemon serves from.
#[derive(Debug, Clone)]
pub struct Inference<B: Backend> {
    model: PretrainModel<B>,
    settings: TrainSettings,
    device: B::Device,
    step: u64,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// The current weights for inference on the inner (non-autodiff) backend, labelled with
    /// `step`. Cheap: parameters are shared with the trainer until its next update replaces
    /// them.
    pub fn inference(&self, step: u64) -> Inference<B::InnerBackend> {
        let model = self.pretrain_model().valid();
        let device = model.devices().into_iter().next().unwrap_or_default();
        Inference {
            model,
            settings: self.settings().clone(),
            device,
            step,
        }
    }
}

impl<B: Backend> Inference<B> {
    /// The step the weights were taken at.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The model configuration.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// Captions `image`.
    pub fn caption(&self, image: &VisualInput, opts: &DecodeOptions) -> Result<Generated, ModelError> {
        caption(&self.model, image, opts)
    }

    /// Continues `prompt` (token ids).
    pub fn continue_text(&self, prompt: &[u32], opts: &DecodeOptions) -> Result<Generated, ModelError> {
        continue_text(&self.model, prompt, opts)
    }

    fn contrastive(&self) -> Result<(), ModelError> {
        if self.config().arch == Arch::Unimo {
            Ok(())
        } else {
            Err(ModelError::Unsupported(
                "ViLBERT has no contrastive embedding space (it scores pairs with its alignment head)".into(),
            ))
        }
    }

    /// Pooled, projected, L2-normalised text vectors (the CMCL space); `None` for an unusable
    /// text (empty, ids outside the vocabulary).
    pub fn embed_texts(&self, texts: &[Vec<u32>]) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
        self.contrastive()?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(EMBED_CHUNK) {
            let (plan, index) = Plan::for_texts(chunk, self.config());
            let rows = if plan.cmcl.texts.is_empty() {
                Vec::new()
            } else {
                to_rows(self.model.pooled_texts(&plan, &self.settings, &self.device))
            };
            out.extend(index.iter().map(|i| i.and_then(|i| rows.get(i).cloned())));
        }
        Ok(out)
    }

    /// Pooled, projected, L2-normalised image vectors (the CMCL space); `None` for an
    /// unusable image.
    pub fn embed_images(&self, images: &[VisualInput]) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
        self.contrastive()?;
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(EMBED_CHUNK) {
            let (plan, index) = Plan::for_images(chunk, self.config());
            let rows = if plan.cmcl.images.is_empty() {
                Vec::new()
            } else {
                to_rows(self.model.pooled_images(&plan, &self.settings, &self.device))
            };
            out.extend(index.iter().map(|i| i.and_then(|i| rows.get(i).cloned())));
        }
        Ok(out)
    }
}

/// A `[k, d]` tensor as `k` vectors.
fn to_rows<B: Backend>(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [_, d] = t.dims();
    let data: Vec<f32> = t.into_data().convert::<f32>().to_vec().unwrap_or_default();
    data.chunks(d.max(1)).map(<[f32]>::to_vec).collect()
}

#[cfg(test)]
mod tests;
