//! The training step the daemon calls: plan, forward, weighted loss, backward with
//! gradient accumulation, non-finite guard, global-norm clipping, AdamW; plus state to and
//! from bytes and the evaluation embeddings.

use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Record, Recorder};
use burn::tensor::backend::AutodiffBackend;
use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::config::{ModelConfig, Objective};
use crate::error::ModelError;
use crate::example::{Example, VisualInput};
use crate::model::PretrainModel;
use crate::layout::Shapes;
use crate::memory::{ImageMemory, Refresh};
use crate::optimizer::{grad_norm_squared, scale_grads_by, MatrixDecayAdamW};
use crate::plan::{ImageRows, Plan};
use crate::readback;
use crate::settings::TrainSettings;

/// Texts or images embedded per forward pass in [`Trainer::embed_texts`] and
/// [`Trainer::embed_images`].
const EMBED_CHUNK: usize = 64;

type Adam<B> = OptimizerAdaptor<MatrixDecayAdamW, PretrainModel<B>, B>;
type OptimRecord<B> = <Adam<B> as Optimizer<PretrainModel<B>, B>>::Record;
type Bytes = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// Everything needed to resume training, as bytes for the daemon's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainerState {
    /// The model configuration ([`ModelConfig::to_json`]).
    pub config_json: String,
    /// Model weights (burn record, MessagePack, full precision).
    pub model: Vec<u8>,
    /// Optimizer moments (burn record, MessagePack, full precision).
    pub optimizer: Vec<u8>,
    /// Optimizer updates applied so far.
    pub steps_applied: u64,
}

/// What one call to [`Trainer::step`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// `("total", weighted sum)` first, then the mean loss of each objective that had
    /// targets in this step, in the order mlm, seq2seq, mrm, cmcl, itm, caption.
    pub losses: Vec<(&'static str, f32)>,
    /// Valid targets of each objective in use (zero when the step had none).
    pub counts: Vec<(&'static str, usize)>,
    /// Global gradient norm before clipping (0 when no gradient was computed).
    pub grad_norm: f32,
    /// A loss or gradient was NaN or infinite: no update was applied.
    pub nonfinite: bool,
    /// An optimizer update was applied.
    pub applied: bool,
    /// Examples used.
    pub samples: usize,
    /// Text tokens of the examples used.
    pub tokens: usize,
    /// Examples dropped as unusable (ids outside the vocabulary, wrong feature width, ...).
    pub dropped: usize,
    /// The cosine similarity of every image positive retrieved from UNIMO's image window in
    /// an applied step ([`crate::memory`]; empty without one).
    pub image_positives: Vec<f32>,
}

/// What a micro-batch leaves for the image window until the step's read shows whether its
/// update was applied.
struct WindowUpdate<B: Backend> {
    /// Values of this micro-batch's retrieved similarities in the step's read.
    similarities: usize,
    /// Retrieved slots and their fresh embeddings ([`ImageMemory::refresh`]).
    refresh: Option<Refresh<B>>,
    /// Image-only examples (key, unmasked rows) and their embeddings, one row each.
    images: Vec<(u64, ImageRows)>,
    embeddings: Option<Tensor<B, 2>>,
}

/// A model with its optimizer, trained one step at a time.
pub struct Trainer<B: AutodiffBackend> {
    config: ModelConfig,
    settings: TrainSettings,
    model: Option<PretrainModel<B>>,
    optimizer: Adam<B>,
    device: B::Device,
    steps_applied: u64,
    shapes: Shapes,
    /// UNIMO's window of image-only examples (empty unless `settings.image_memory` is on).
    memory: ImageMemory<B::InnerBackend>,
}

fn image_memory<B: Backend>(config: &ModelConfig, settings: &TrainSettings) -> ImageMemory<B> {
    let on = if config.uses(Objective::Cmcl) { settings.image_memory } else { Default::default() };
    ImageMemory::new(on, config.pooled_dim(), config.feature_dim, config.max_objects)
}

fn optimizer<B: AutodiffBackend>(settings: &TrainSettings) -> Adam<B> {
    OptimizerAdaptor::from(MatrixDecayAdamW {
        beta_1: settings.betas.0,
        beta_2: settings.betas.1,
        epsilon: settings.eps,
        weight_decay: settings.weight_decay,
    })
}

fn weight(config: &ModelConfig, objective: Objective) -> f32 {
    let w = config.weights;
    match objective {
        Objective::Mlm => w.mlm,
        Objective::Seq2seq => w.seq2seq,
        Objective::Mrm => w.mrm,
        Objective::Cmcl => w.cmcl,
        Objective::Itm => w.itm,
        Objective::Caption => w.caption,
    }
}

impl<B: AutodiffBackend> Trainer<B> {
    /// A trainer with freshly initialised weights.
    pub fn new(config: ModelConfig, settings: TrainSettings, device: B::Device) -> Result<Self, ModelError> {
        config.validate()?;
        B::seed(&device, settings.seed);
        crate::nn::ops::seed_dropout(settings.seed);
        let model = PretrainModel::new(&config, &device);
        Ok(Self {
            optimizer: optimizer::<B>(&settings),
            memory: image_memory(&config, &settings),
            config,
            model: Some(model),
            shapes: Shapes::new(settings.shape_policy),
            settings,
            device,
            steps_applied: 0,
        })
    }

    fn model(&self) -> &PretrainModel<B> {
        self.model.as_ref().expect("the model is only taken out during an update")
    }

    /// The model configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The training settings.
    pub fn settings(&self) -> &TrainSettings {
        &self.settings
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.model().num_params()
    }

    /// Optimizer updates applied so far (across save/load).
    pub fn steps_applied(&self) -> u64 {
        self.steps_applied
    }

    /// The model, for evaluation code that needs more than the embeddings.
    pub fn pretrain_model(&self) -> &PretrainModel<B> {
        self.model()
    }

    /// Image-only examples held in UNIMO's image window ([`crate::memory`]).
    pub fn image_window_len(&self) -> usize {
        self.memory.len()
    }

    /// Distinct tensor-shape signatures ([`crate::layout::Layout`]s) of the steps so far
    /// (this process; not saved).
    pub fn shape_signatures(&self) -> usize {
        self.shapes.signatures()
    }

    /// One optimizer step over `micro_batches`: gradients are summed over the micro-batches,
    /// then one AdamW update with learning rate `lr` is applied, unless a loss or gradient
    /// was not finite.
    ///
    /// Made for a GPU: nothing is read from the device until the update is queued, and then
    /// exactly once ([`crate::readback`]): every micro-batch's losses and the squared
    /// gradient norm in one tensor. Clipping is computed on the device. When that read shows
    /// a non-finite value, the model and the optimizer state from before the update are put
    /// back (they are kept until the read; on a GPU that is a second copy of the weights and
    /// moments for the length of a step).
    pub fn step(&mut self, micro_batches: &[Vec<Example>], lr: f64) -> StepReport {
        // Another thread's backward must not free this step's graph while it is built.
        let _graphs = crate::autodiff_lock();
        // Masking randomness depends only on the seed and the step position, so a resumed
        // run draws the same masks as an uninterrupted one.
        let mut rng = StdRng::seed_from_u64(
            self.settings
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(self.steps_applied.wrapping_mul(0xBF58_476D_1CE4_E5B9)),
        );
        const K: usize = Objective::ALL.len();
        let mut report = StepReport {
            losses: Vec::new(),
            counts: Vec::new(),
            grad_norm: 0.0,
            nonfinite: false,
            applied: false,
            samples: 0,
            tokens: 0,
            dropped: 0,
            image_positives: Vec::new(),
        };
        let mut accumulator = GradientsAccumulator::<PretrainModel<B>>::new();
        // Per micro-batch with targets: the loss of each objective (0 when absent) and the
        // weighted total, detached, on the device; and the target counts (host-side).
        let mut packed: Vec<Tensor<B::InnerBackend, 1>> = Vec::new();
        let mut counts: Vec<[usize; K]> = Vec::new();
        // The image window as it was at the step's start: retrieval reads it on the device;
        // what the step computed for it is written after the read, if the update is applied.
        let window = self.memory.tensors::<B>(
            &self.settings.object_buckets,
            Tensor::from_inner,
            Tensor::from_inner,
            &self.device,
        );
        let collect = self.memory.collects();
        let mut updates: Vec<WindowUpdate<B::InnerBackend>> = Vec::new();
        for examples in micro_batches {
            let mut plan = Plan::build(examples, &self.config, &mut rng);
            report.samples += plan.samples;
            report.tokens += plan.tokens;
            report.dropped += plan.dropped;
            let layout = self.shapes.layout(&plan, &self.config, &self.settings);
            let model = self.model.as_ref().expect("the model is present between steps");
            let (losses, outputs) = model.step_outputs(&plan, &layout, &self.device, window.as_ref(), collect);
            let mut total: Option<Tensor<B, 1>> = None;
            let mut these = [0usize; K];
            let mut values: [Option<Tensor<B::InnerBackend, 1>>; K] = Default::default();
            for l in &losses {
                let k = Objective::ALL.iter().position(|&o| o == l.objective).unwrap_or(0);
                these[k] = l.count;
                values[k] = Some(l.loss.clone().detach().inner());
                let w = weight(&self.config, l.objective);
                if w > 0.0 {
                    let term = l.loss.clone().mul_scalar(w);
                    total = Some(match total {
                        Some(t) => t + term,
                        None => term,
                    });
                }
            }
            let Some(total) = total else { continue };
            if these.iter().all(|&c| c == 0) {
                continue;
            }
            let inner_device = total.clone().inner().device();
            let mut parts: Vec<Tensor<B::InnerBackend, 1>> = values
                .into_iter()
                .map(|v| v.unwrap_or_else(|| Tensor::zeros([1], &inner_device)))
                .collect();
            parts.push(total.clone().detach().inner());
            let mut update = WindowUpdate {
                similarities: 0,
                refresh: outputs.refresh.map(|r| Refresh { indices: r.indices.inner(), fresh: r.fresh.inner(), valid: r.valid.inner() }),
                images: Vec::new(),
                embeddings: outputs.image_only.map(|e| e.inner()),
            };
            if let Some(sims) = outputs.similarities {
                update.similarities = sims.dims()[0];
                parts.push(sims.detach().inner());
            }
            if update.embeddings.is_some() {
                // Moved out: the plan is done with them.
                update.images = std::mem::take(&mut plan.image_only).into_iter().map(|(_, key, rows)| (key, rows)).collect();
            }
            updates.push(update);
            packed.push(Tensor::cat(parts, 0));
            counts.push(these);
            let grads = GradientsParams::from_grads(total.backward(), model);
            accumulator.accumulate(model, grads);
        }
        let mut sums = [(0.0f64, 0usize); K];
        if !packed.is_empty() {
            let mut grads = accumulator.grads();
            let model = self.model.take().expect("the model is present between steps");
            let inner_device = packed[0].device();
            let norm_sq = grad_norm_squared::<B, _>(&model, &grads).unwrap_or_else(|| Tensor::zeros([1], &inner_device));
            let max = self.settings.max_grad_norm;
            if max > 0.0 {
                // min(1, max / (norm + 1e-6)), on the device.
                let factor = norm_sq.clone().sqrt().add_scalar(1e-6).recip().mul_scalar(max).clamp_max(1.0);
                scale_grads_by::<B, _>(&model, &mut grads, factor);
            }
            let before = (model.clone(), self.optimizer.to_record());
            self.model = Some(self.optimizer.step(lr, model, grads));
            // The step's one device-to-host read, after the update is queued.
            packed.push(norm_sq.reshape([1]));
            let values = readback::to_host(Tensor::cat(packed, 0));
            let norm = values.last().copied().unwrap_or(f32::NAN).sqrt();
            report.grad_norm = norm;
            let expected: usize = updates.iter().map(|u| K + 1 + u.similarities).sum::<usize>() + 1;
            report.nonfinite = values.len() != expected || !norm.is_finite();
            let mut at = 0;
            let mut similarities = Vec::new();
            for (these, update) in counts.iter().zip(&updates) {
                let Some(v) = values.get(at..at + K + 1) else { break };
                at += K + 1;
                if v.iter().any(|x| !x.is_finite()) {
                    report.nonfinite = true;
                } else {
                    for k in 0..K {
                        sums[k].0 += v[k] as f64 * these[k] as f64;
                        sums[k].1 += these[k];
                    }
                }
                if let Some(s) = values.get(at..at + update.similarities) {
                    // -2 marks "no positive"; a cosine is >= -1.
                    similarities.extend(s.iter().copied().filter(|&x| x >= -1.5));
                }
                at += update.similarities;
            }
            if report.nonfinite {
                let (model, moments) = before;
                self.model = Some(model);
                self.optimizer = optimizer::<B>(&self.settings).load_record(moments);
            } else {
                self.steps_applied += 1;
                report.applied = true;
                report.image_positives = similarities;
                // The step's views of the window go first, so that the writes own it.
                drop(window);
                for update in updates {
                    if let Some(refresh) = update.refresh {
                        self.memory.refresh(refresh);
                    }
                    if let Some(embeddings) = update.embeddings {
                        self.memory.insert(&update.images, embeddings);
                    }
                }
            }
        }
        let mut total = 0.0f64;
        let mut per_objective = Vec::new();
        for (k, &o) in Objective::ALL.iter().enumerate() {
            if !self.config.uses(o) {
                continue;
            }
            report.counts.push((o.name(), sums[k].1));
            if sums[k].1 > 0 {
                let mean = sums[k].0 / sums[k].1 as f64;
                total += weight(&self.config, o) as f64 * mean;
                per_objective.push((o.name(), mean as f32));
            }
        }
        if !per_objective.is_empty() {
            report.losses.push(("total", total as f32));
            report.losses.extend(per_objective);
        }
        report
    }

    /// Serialises config, weights and optimizer state (bit-exact round trip).
    pub fn save(&self) -> Result<TrainerState, ModelError> {
        let recorder = Bytes::default();
        let model = Recorder::<B>::record(&recorder, self.model().clone().into_record(), ())
            .map_err(|e| ModelError::State(format!("model: {e}")))?;
        // The optimizer record is a hash map: written sorted by parameter id so that equal
        // states give equal bytes (MessagePack maps read back into the hash map alike).
        let item = Record::<B>::into_item::<FullPrecisionSettings>(self.optimizer.to_record());
        let sorted: BTreeMap<_, _> = item.into_iter().collect();
        let optimizer = Recorder::<B>::save_item(&recorder, sorted, ())
            .map_err(|e| ModelError::State(format!("optimizer: {e}")))?;
        Ok(TrainerState {
            config_json: self.config.to_json(),
            model,
            optimizer,
            steps_applied: self.steps_applied,
        })
    }

    /// Rebuilds a trainer from [`Trainer::save`]'s state.
    pub fn load(state: &TrainerState, settings: TrainSettings, device: B::Device) -> Result<Self, ModelError> {
        let config = ModelConfig::from_json(&state.config_json)?;
        let recorder = Bytes::default();
        let record = Recorder::<B>::load::<<PretrainModel<B> as Module<B>>::Record>(&recorder, state.model.clone(), &device)
            .map_err(|e| ModelError::State(format!("model: {e}")))?;
        let model = PretrainModel::<B>::new(&config, &device).load_record(record);
        let item: <OptimRecord<B> as Record<B>>::Item<FullPrecisionSettings> =
            Recorder::<B>::load_item(&recorder, &mut state.optimizer.clone())
                .map_err(|e| ModelError::State(format!("optimizer: {e}")))?;
        let optim_record = <OptimRecord<B> as Record<B>>::from_item::<FullPrecisionSettings>(item, &device);
        let optimizer = optimizer::<B>(&settings).load_record(optim_record);
        B::seed(&device, settings.seed ^ state.steps_applied);
        crate::nn::ops::seed_dropout(settings.seed ^ state.steps_applied);
        Ok(Self {
            memory: image_memory(&config, &settings),
            config,
            shapes: Shapes::new(settings.shape_policy),
            settings,
            model: Some(model),
            optimizer,
            device,
            steps_applied: state.steps_applied,
        })
    }

    /// Pooled, projected, L2-normalised image vectors (the CMCL space), in eval mode (no
    /// dropout). An unusable image (wrong feature width, no rows) gets a zero vector.
    pub fn embed_images(&self, images: &[VisualInput]) -> Vec<Vec<f32>> {
        let model = self.model().valid();
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(EMBED_CHUNK) {
            let (plan, index) = Plan::for_images(chunk, &self.config);
            let rows = if plan.cmcl.images.is_empty() {
                Vec::new()
            } else {
                to_rows(model.pooled_images(&plan, &self.settings, &self.device))
            };
            out.extend(index.iter().map(|i| self.row_or_zero(&rows, *i)));
        }
        out
    }

    /// Pooled, projected, L2-normalised text vectors (the CMCL space), in eval mode. An
    /// unusable text (empty, ids outside the vocabulary) gets a zero vector.
    pub fn embed_texts(&self, texts: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let model = self.model().valid();
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(EMBED_CHUNK) {
            let (plan, index) = Plan::for_texts(chunk, &self.config);
            let rows = if plan.cmcl.texts.is_empty() {
                Vec::new()
            } else {
                to_rows(model.pooled_texts(&plan, &self.settings, &self.device))
            };
            out.extend(index.iter().map(|i| self.row_or_zero(&rows, *i)));
        }
        out
    }

    /// Alignment scores of every (image, text) combination: `scores[i][j]` = the image-text
    /// matching logit (higher = more likely a pair) of image i with text j, in eval mode (no dropout).
    /// Works for both architectures (UNIMO: its ITM head over the joint sequence); batches the
    /// N x M combinations in chunks of at most `chunk` pairs to bound memory.
    ///
    /// This is ViLBERT's retrieval (its alignment-prediction head scores each pair jointly
    /// through the co-attention model); its contrastive projection is never trained, so
    /// [`Trainer::embed_images`] / [`Trainer::embed_texts`] are not meaningful for it.
    /// An unusable image or text ([`VisualInput::problem`], empty, ids outside the
    /// vocabulary) scores `f32::NEG_INFINITY` with everything. A `chunk` of 0 is taken as 1.
    pub fn match_scores(&self, images: &[VisualInput], texts: &[Vec<u32>], chunk: usize) -> Vec<Vec<f32>> {
        let mut scores = vec![vec![f32::NEG_INFINITY; texts.len()]; images.len()];
        let clean_images = Plan::clean_images(images, &self.config);
        let clean_texts = Plan::clean_texts(texts, &self.config);
        let usable: Vec<(usize, usize)> = clean_images
            .iter()
            .enumerate()
            .filter(|(_, im)| im.is_some())
            .flat_map(|(i, _)| {
                clean_texts
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.is_some())
                    .map(move |(j, _)| (i, j))
            })
            .collect();
        if usable.is_empty() {
            return scores;
        }
        let model = self.model().valid();
        for part in usable.chunks(chunk.max(1)) {
            let pairs: Vec<_> = part
                .iter()
                .filter_map(|&(i, j)| Some((clean_images[i].as_ref()?, clean_texts[j].as_deref()?)))
                .collect();
            let plan = Plan::for_matching(&pairs);
            let logits: Vec<f32> = readback::to_host(model.match_logits(&plan, &self.settings, &self.device));
            for (&(i, j), &v) in part.iter().zip(&logits) {
                scores[i][j] = v;
            }
        }
        scores
    }

    fn row_or_zero(&self, rows: &[Vec<f32>], index: Option<usize>) -> Vec<f32> {
        index
            .and_then(|i| rows.get(i).cloned())
            .unwrap_or_else(|| vec![0.0; self.config.pooled_dim()])
    }
}

/// A `[k, d]` tensor as `k` vectors.
fn to_rows<B: Backend>(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [_, d] = t.dims();
    let data: Vec<f32> = readback::to_host(t);
    data.chunks(d.max(1)).map(<[f32]>::to_vec).collect()
}
