//! The trainable model: one backbone (UNIMO or ViLBERT) plus the shared heads, and the
//! forward pass that turns a [`Plan`] into one loss per objective.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::config::{Arch, ModelConfig, Objective};
use crate::group_tensors::{Encoded, GroupTensors};
use crate::layout::Layout;
use crate::heads::{Heads, HeadsConfig};
use crate::memory::{self, MemoryTensors};
use crate::objectives::{contrastive, matching, region, token};
use crate::plan::{Plan, Slot, IMAGE, JOINT};
use crate::settings::TrainSettings;
use crate::unimo::{UnimoBackbone, UnimoBackboneConfig};
use crate::vilbert::{VilbertBackbone, VilbertBackboneConfig};

mod module;

pub use module::PretrainModelRecord;

/// The backbone of a [`PretrainModel`], one per architecture.
// One per model, built once and never moved in a loop: boxing the larger variant would buy
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone<B: Backend> {
    /// UNIMO's single-stream Transformer.
    Unimo(UnimoBackbone<B>),
    /// ViLBERT's two streams with co-attention.
    Vilbert(VilbertBackbone<B>),
}

impl<B: Backend> Backbone<B> {
    /// The backbone of `config` with fresh weights.
    pub fn new(config: &ModelConfig, device: &B::Device) -> Self {
        match config.arch {
            Arch::Unimo => Self::Unimo(UnimoBackboneConfig::from(config).init(device)),
            Arch::Vilbert => Self::Vilbert(VilbertBackboneConfig::from(config).init(device)),
        }
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        match self {
            Self::Unimo(_) => Arch::Unimo,
            Self::Vilbert(_) => Arch::Vilbert,
        }
    }

    /// Encodes one group.
    pub(crate) fn encode(&self, input: &GroupTensors<B>) -> Encoded<B> {
        match self {
            Self::Unimo(u) => u.encode(input),
            Self::Vilbert(v) => v.encode(input),
        }
    }

    /// The word embedding matrix, `[vocab, hidden]` (the tied MLM output).
    pub fn word_weight(&self) -> Tensor<B, 2> {
        match self {
            Self::Unimo(u) => u.text.word.weight.val(),
            Self::Vilbert(v) => v.text.word.weight.val(),
        }
    }
}

/// A backbone with its pretraining heads, and the configuration they were built from.
///
/// Its [`Module`] implementation is written out (`model/module.rs`) to keep the parameter
/// paths and record layout of older checkpoints.
#[derive(Debug)]
pub struct PretrainModel<B: Backend> {
    backbone: Backbone<B>,
    heads: Heads<B>,
    config: ModelConfig,
}

impl<B: Backend> Clone for PretrainModel<B> {
    fn clone(&self) -> Self {
        Self {
            backbone: self.backbone.clone(),
            heads: self.heads.clone(),
            config: self.config.clone(),
        }
    }
}

/// The loss of one objective with its count of valid targets.
#[derive(Debug, Clone)]
pub struct ObjectiveLoss<B: Backend> {
    /// Which objective.
    pub objective: Objective,
    /// Mean loss over the targets, `[1]`.
    pub loss: Tensor<B, 1>,
    /// Number of valid targets (tokens, regions, anchors or matching rows).
    pub count: usize,
}

/// What one micro-batch's forward pass gives the step besides its losses: for UNIMO's image
/// window ([`crate::memory`]), on the device, without gradient.
pub(crate) struct WindowOutputs<B: Backend> {
    /// `[pairs * k]`: the retrieved positives' similarities, -2 where none
    /// ([`memory::Retrieval::similarities`]); with a window only.
    pub(crate) similarities: Option<Tensor<B, 1>>,
    /// The retrieved slots, their embeddings as this step computed them, and whether each
    /// may replace the kept one ([`memory::ImageMemory::refresh`]); with a window only.
    pub(crate) refresh: Option<memory::Refresh<B>>,
    /// `[image rows, pooled]`: the embeddings of the plan's image-only rows, in
    /// `plan.image_only` order (padding after); when collected.
    pub(crate) image_only: Option<Tensor<B, 2>>,
}

/// Which part of a row's hidden states a slot points into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Text,
    Visual,
}

impl<B: Backend> PretrainModel<B> {
    /// A model for `config` with fresh weights.
    pub fn new(config: &ModelConfig, device: &B::Device) -> Self {
        let model = Self {
            backbone: Backbone::new(config, device),
            heads: HeadsConfig::from(config).init(device),
            config: config.clone(),
        };
        // burn initialises parameters lazily, and a clone of an uninitialised parameter
        // draws its own values: materialise them now, so that clones (saved states, eval
        // copies) hold the same weights as the model that trains.
        model.visit(&mut Materialize);
        model
    }

    /// The heads.
    pub fn heads(&self) -> &Heads<B> {
        &self.heads
    }

    /// The backbone.
    pub fn backbone(&self) -> &Backbone<B> {
        &self.backbone
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Encodes one group with the backbone.
    pub(crate) fn encode(&self, input: &GroupTensors<B>) -> Encoded<B> {
        self.backbone.encode(input)
    }

    /// Encodes every non-empty group of `plan`.
    pub(crate) fn encode_plan(&self, plan: &Plan, settings: &TrainSettings, device: &B::Device) -> [Option<Encoded<B>>; 3] {
        self.encode_layout(plan, &Layout::tight(plan, &self.config, settings), device)
    }

    /// Encodes the groups of `plan` padded to `layout` (a group of 0 rows is skipped).
    pub(crate) fn encode_layout(&self, plan: &Plan, layout: &Layout, device: &B::Device) -> [Option<Encoded<B>>; 3] {
        let enc = |g: usize| {
            let shape = layout.groups[g];
            (shape.rows > 0).then(|| self.encode(&GroupTensors::with_shape(&plan.groups[g], shape, &self.config, device)))
        };
        [enc(0), enc(1), enc(2)]
    }

    /// The losses of `plan` computed at the sizes of `layout` (which holds the plan): one
    /// entry per objective the layout computes, in reporting order, each the mean over the
    /// plan's real targets (padding is masked out; 0 when the plan has none).
    ///
    /// With UNIMO's image window: with `memory`, CMCL
    /// retrieves each pair's image positives from it on the device and encodes them in this
    /// pass; with `collect`, the embeddings of the plan's image-only rows are returned for
    /// the window.
    pub(crate) fn step_outputs(
        &self,
        plan: &Plan,
        layout: &Layout,
        device: &B::Device,
        memory: Option<&MemoryTensors<B>>,
        collect: bool,
    ) -> (Vec<ObjectiveLoss<B>>, WindowOutputs<B>) {
        let config = &self.config;
        let encoded = self.encode_layout(plan, layout, device);
        let flat = Flat::new(&encoded);
        let mut out = Vec::new();
        let mut window = WindowOutputs { similarities: None, refresh: None, image_only: None };
        let image_rows = layout.groups[IMAGE].rows;
        if collect && !plan.image_only.is_empty() && config.uses(Objective::Cmcl) && image_rows > 0 {
            let slots: Vec<Slot> = plan.image_only.iter().map(|&(row, _, _)| Slot { group: IMAGE, row, pos: 0 }).collect();
            window.image_only = Some(self.heads.image_embedding(flat.gather(&slots, image_rows, Part::Visual, device)).detach());
        }
        let int = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        let float = |v: Vec<f32>| {
            let n = v.len();
            Tensor::<B, 1>::from_data(TensorData::new(v, [n]), device)
        };
        let ones_then_zeros = |real: usize, padded: usize| {
            let mut w = vec![0.0f32; padded];
            w[..real].fill(1.0);
            w
        };
        for (objective, targets, padded) in [
            (Objective::Mlm, &plan.mlm, layout.mlm),
            (Objective::Seq2seq, &plan.seq2seq, layout.seq2seq),
            (Objective::Caption, &plan.caption, layout.caption),
        ] {
            if padded == 0 {
                continue;
            }
            let slots: Vec<Slot> = targets.iter().map(|t| t.slot).collect();
            let hidden = flat.gather(&slots, padded, Part::Text, device);
            let mut labels = vec![0i64; padded];
            for (l, t) in labels.iter_mut().zip(targets.iter()) {
                *l = t.label as i64;
            }
            let logits = self.heads.token_logits(hidden, self.backbone.word_weight());
            out.push(ObjectiveLoss {
                objective,
                loss: token::masked_cross_entropy(logits, int(labels), float(ones_then_zeros(targets.len(), padded)), targets.len()),
                count: targets.len(),
            });
        }
        if layout.mrm > 0 {
            let r = layout.mrm;
            let real = plan.mrm.len();
            let slots: Vec<Slot> = plan.mrm.iter().map(|t| t.slot).collect();
            let hidden = flat.gather(&slots, r, Part::Visual, device);
            let f = config.feature_dim;
            let mut target = vec![0.0f32; r * f];
            for (k, t) in plan.mrm.iter().enumerate() {
                target[k * f..(k + 1) * f].copy_from_slice(&t.feature);
            }
            let target = Tensor::<B, 2>::from_data(TensorData::new(target, [r, f]), device);
            let weights = float(ones_then_zeros(real, r));
            let mut loss = region::masked_regression(self.heads.region_features(hidden.clone()), target, weights, real);
            if layout.mrm_classes {
                if let Some(logits) = self.heads.region_class_logits(hidden) {
                    // Rows without a class distribution (and padding) get a zero target: they
                    // add nothing to `sum p log q`.
                    let c = config.region_classes;
                    let mut probs = vec![0.0f32; r * c];
                    let mut with_classes = 0;
                    for (k, t) in plan.mrm.iter().enumerate() {
                        if let Some(p) = &t.classes {
                            probs[k * c..(k + 1) * c].copy_from_slice(p);
                            with_classes += 1;
                        }
                    }
                    let plnp: f32 = probs.iter().filter(|&&p| p > 0.0).map(|&p| p * p.ln()).sum();
                    let target = Tensor::<B, 2>::from_data(TensorData::new(probs, [r, c]), device);
                    loss = loss + region::kl_to_classes_over(logits, target, plnp, with_classes);
                }
            }
            out.push(ObjectiveLoss {
                objective: Objective::Mrm,
                loss,
                count: real,
            });
        }
        if layout.cmcl_pairs > 0 {
            let pairs = &plan.cmcl.pairs;
            let (real_texts, real_images) = if pairs.is_empty() {
                (0, 0)
            } else {
                (plan.cmcl.texts.len(), plan.cmcl.images.len())
            };
            let p = layout.cmcl_pairs;
            let texts = self.heads.text_embedding(flat.gather(&plan.cmcl.texts[..real_texts], layout.cmcl_texts, Part::Text, device));
            let images =
                self.heads.image_embedding(flat.gather(&plan.cmcl.images[..real_images], layout.cmcl_images, Part::Visual, device));
            let padded = |v: Vec<i64>| {
                let mut v = v;
                v.resize(p, 0);
                int(v)
            };
            let image_anchors = padded(pairs.iter().map(|q| q.image as i64).collect());
            let text_anchors = padded(pairs.iter().map(|q| q.caption as i64).collect());
            let mut i2t: Vec<Vec<usize>> = pairs.iter().map(|q| q.positive_texts.clone()).collect();
            let mut t2i: Vec<Vec<usize>> = pairs.iter().map(|q| q.positive_images.clone()).collect();
            i2t.resize(p, vec![0]);
            t2i.resize(p, vec![0]);
            let scale = self.heads.logit_scale();
            let a = contrastive::masked_group_info_nce(
                images.clone().select(0, image_anchors.clone()),
                texts.clone(),
                scale.clone(),
                &i2t,
                real_texts,
                pairs.len(),
            );
            let extra = match memory {
                Some(m) if !pairs.is_empty() => {
                    let anchors = images.clone().select(0, image_anchors.clone()).detach();
                    let r = memory::retrieve(anchors, m, pairs.len());
                    let features = m.features.clone().select(0, r.indices.clone());
                    let locations = m.locations.clone().select(0, r.indices.clone());
                    let bias = m.row_bias.clone().select(0, r.indices.clone());
                    let encoded = self.encode(&GroupTensors::visual_only(features, locations, bias));
                    let rows = r.indices.dims()[0];
                    let visual = encoded.visual.expect("visual rows were encoded");
                    // Each row's `[IMG]` state, by a gather (as `Flat::gather` does: on the
                    // fused backends a reshape of a narrowed view gave wrong values here).
                    let firsts = Tensor::<B, 1, Int>::arange_step(0..(rows * encoded.n) as i64, encoded.n, device);
                    let img = visual.select(0, firsts);
                    let candidates = self.heads.image_embedding(img);
                    window.similarities = Some(r.similarities);
                    window.refresh = Some(memory::Refresh { indices: r.indices, fresh: candidates.clone().detach(), valid: r.filled });
                    Some(contrastive::ExtraCandidates {
                        candidates,
                        positive_bias: r.positive_bias,
                        candidate_bias: r.candidate_bias,
                    })
                }
                _ => None,
            };
            let b = contrastive::masked_group_info_nce_with_extra(
                texts.select(0, text_anchors),
                images,
                scale,
                &t2i,
                real_images,
                pairs.len(),
                extra,
            );
            out.push(ObjectiveLoss {
                objective: Objective::Cmcl,
                loss: (a + b).div_scalar(2.0),
                count: pairs.len(),
            });
        }
        if layout.itm > 0 {
            let m = layout.itm;
            let logits = self.itm_logits(&flat, plan, m, device);
            let mut labels = vec![false; m];
            for (l, t) in labels.iter_mut().zip(&plan.itm) {
                *l = t.matched;
            }
            out.push(ObjectiveLoss {
                objective: Objective::Itm,
                loss: matching::masked_binary_cross_entropy(logits, &labels, float(ones_then_zeros(plan.itm.len(), m)), plan.itm.len()),
                count: plan.itm.len(),
            });
        }
        (out, window)
    }

    /// The ITM head over the pooled `[CLS]` and `[IMG]` states of the plan's matching rows,
    /// in target order, padded to `padded` logits.
    ///
    /// # Shapes
    /// - output: `[padded]`
    fn itm_logits(&self, flat: &Flat<B>, plan: &Plan, padded: usize, device: &B::Device) -> Tensor<B, 1> {
        let slots: Vec<Slot> = plan.itm.iter().map(|m| Slot { group: JOINT, row: m.row, pos: 0 }).collect();
        let cls = flat.gather(&slots, padded, Part::Text, device);
        let img = flat.gather(&slots, padded, Part::Visual, device);
        self.heads.match_logits(cls, img)
    }

    /// Image-text matching logits of the plan's ITM targets, in target order (higher =
    /// more likely a pair). The plan must have at least one ITM target.
    ///
    /// # Shapes
    /// - output: `[itm targets]`
    pub(crate) fn match_logits(&self, plan: &Plan, settings: &TrainSettings, device: &B::Device) -> Tensor<B, 1> {
        let encoded = self.encode_plan(plan, settings, device);
        self.itm_logits(&Flat::new(&encoded), plan, plan.itm.len(), device)
    }

    /// Pooled, projected, L2-normalised text vectors of the plan's text candidates, in
    /// candidate order.
    ///
    /// # Shapes
    /// - output: `[candidates, pooled]`
    pub(crate) fn pooled_texts(&self, plan: &Plan, settings: &TrainSettings, device: &B::Device) -> Tensor<B, 2> {
        let encoded = self.encode_plan(plan, settings, device);
        let texts = &plan.cmcl.texts;
        self.heads.text_embedding(Flat::new(&encoded).gather(texts, texts.len(), Part::Text, device))
    }

    /// Pooled, projected, L2-normalised image vectors of the plan's image candidates.
    ///
    /// # Shapes
    /// - output: `[candidates, pooled]`
    pub(crate) fn pooled_images(&self, plan: &Plan, settings: &TrainSettings, device: &B::Device) -> Tensor<B, 2> {
        let encoded = self.encode_plan(plan, settings, device);
        let images = &plan.cmcl.images;
        self.heads.image_embedding(Flat::new(&encoded).gather(images, images.len(), Part::Visual, device))
    }
}

/// Forces every parameter's lazy initialisation.
struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// The hidden states of all encoder calls of a step, each part (text, visual) concatenated
/// over the groups, so that one `select` gathers any slots in any order, at a size that
/// depends only on the layout.
struct Flat<B: Backend> {
    text: Option<Tensor<B, 2>>,
    visual: Option<Tensor<B, 2>>,
    /// Per group: (first flat row, row stride) of its text / visual states.
    text_at: [(usize, usize); 3],
    visual_at: [(usize, usize); 3],
}

impl<B: Backend> Flat<B> {
    fn new(encoded: &[Option<Encoded<B>>; 3]) -> Self {
        let mut text_at = [(0, 0); 3];
        let mut visual_at = [(0, 0); 3];
        let (mut texts, mut visuals) = (Vec::new(), Vec::new());
        let (mut t0, mut v0) = (0, 0);
        for (g, enc) in encoded.iter().enumerate() {
            let Some(enc) = enc else { continue };
            if let Some(t) = &enc.text {
                text_at[g] = (t0, enc.t);
                t0 += t.dims()[0];
                texts.push(t.clone());
            }
            if let Some(v) = &enc.visual {
                visual_at[g] = (v0, enc.n);
                v0 += v.dims()[0];
                visuals.push(v.clone());
            }
        }
        let join = |mut parts: Vec<Tensor<B, 2>>| match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(Tensor::cat(parts, 0)),
        };
        Self {
            text: join(texts),
            visual: join(visuals),
            text_at,
            visual_at,
        }
    }

    /// The states at `slots`, in slot order, followed by copies of flat row 0 up to
    /// `padded` rows (padding; callers mask it out).
    ///
    /// # Shapes
    /// - output: `[padded, hidden]`
    fn gather(&self, slots: &[Slot], padded: usize, part: Part, device: &B::Device) -> Tensor<B, 2> {
        assert!(padded >= slots.len(), "a layout holds its plan");
        let (states, at) = match part {
            Part::Text => (&self.text, &self.text_at),
            Part::Visual => (&self.visual, &self.visual_at),
        };
        let states = states.as_ref().expect("every planned slot points into an encoded group");
        let mut idx = vec![0i64; padded];
        for (i, s) in idx.iter_mut().zip(slots) {
            let (base, stride) = at[s.group];
            *i = (base + s.row * stride + s.pos) as i64;
        }
        states.clone().select(0, Tensor::from_data(TensorData::new(idx, [padded]), device))
    }
}

impl<B: Backend> PretrainModel<B> {
    /// The UNIMO backbone (`None` for ViLBERT), for generation.
    pub fn unimo(&self) -> Option<&UnimoBackbone<B>> {
        match &self.backbone {
            Backbone::Unimo(u) => Some(u),
            Backbone::Vilbert(_) => None,
        }
    }
}
