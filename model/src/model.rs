//! The trainable model: one backbone (UNIMO or ViLBERT) plus the shared heads, and the
//! forward pass that turns a [`Plan`] into one loss per objective.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::config::{Arch, ModelConfig, Objective};
use crate::group_tensors::{Encoded, GroupTensors};
use crate::heads::Heads;
use crate::objectives::{contrastive, matching, region, token};
use crate::plan::{Plan, Slot, JOINT};
use crate::settings::TrainSettings;
use crate::unimo::UnimoBackbone;
use crate::vilbert::VilbertBackbone;

/// A backbone with its pretraining heads. Exactly one backbone is present.
#[derive(Module, Debug)]
pub struct PretrainModel<B: Backend> {
    unimo: Option<UnimoBackbone<B>>,
    vilbert: Option<VilbertBackbone<B>>,
    heads: Heads<B>,
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

/// Which part of a row's hidden states a slot points into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Text,
    Visual,
}

impl<B: Backend> PretrainModel<B> {
    /// A model for `config` with fresh weights.
    pub fn new(config: &ModelConfig, device: &B::Device) -> Self {
        let (unimo, vilbert) = match config.arch {
            Arch::Unimo => (Some(UnimoBackbone::new(config, device)), None),
            Arch::Vilbert => (None, Some(VilbertBackbone::new(config, device))),
        };
        let model = Self {
            unimo,
            vilbert,
            heads: Heads::new(config, device),
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

    /// Encodes one group with the backbone.
    pub fn encode(&self, input: &GroupTensors<B>) -> Encoded<B> {
        match (&self.unimo, &self.vilbert) {
            (Some(u), _) => u.encode(input),
            (None, Some(v)) => v.encode(input),
            (None, None) => unreachable!("a PretrainModel always has a backbone"),
        }
    }

    /// The word embedding matrix, `[vocab, hidden]` (the tied MLM output).
    fn word_weight(&self) -> Tensor<B, 2> {
        match (&self.unimo, &self.vilbert) {
            (Some(u), _) => u.text.word.weight.val(),
            (None, Some(v)) => v.text.word.weight.val(),
            (None, None) => unreachable!("a PretrainModel always has a backbone"),
        }
    }

    /// Encodes every non-empty group of `plan`.
    pub fn encode_plan(
        &self,
        plan: &Plan,
        config: &ModelConfig,
        settings: &TrainSettings,
        device: &B::Device,
    ) -> [Option<Encoded<B>>; 3] {
        let enc = |g: usize| {
            let group = &plan.groups[g];
            (group.rows() > 0).then(|| self.encode(&GroupTensors::new(group, config, settings, device)))
        };
        [enc(0), enc(1), enc(2)]
    }

    /// The losses of every objective that has targets in `plan`, in reporting order.
    pub fn losses(
        &self,
        plan: &Plan,
        config: &ModelConfig,
        settings: &TrainSettings,
        device: &B::Device,
    ) -> Vec<ObjectiveLoss<B>> {
        let encoded = self.encode_plan(plan, config, settings, device);
        let mut out = Vec::new();
        let int = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        for (objective, targets) in [
            (Objective::Mlm, &plan.mlm),
            (Objective::Seq2seq, &plan.seq2seq),
            (Objective::Caption, &plan.caption),
        ] {
            if targets.is_empty() {
                continue;
            }
            let slots: Vec<Slot> = targets.iter().map(|t| t.slot).collect();
            let (hidden, order) = gather(&encoded, &slots, Part::Text);
            let labels: Vec<i64> = order.iter().map(|&i| targets[i].label as i64).collect();
            let logits = self.heads.token_logits(hidden, self.word_weight());
            out.push(ObjectiveLoss {
                objective,
                loss: token::cross_entropy(logits, int(labels)),
                count: targets.len(),
            });
        }
        if !plan.mrm.is_empty() {
            let slots: Vec<Slot> = plan.mrm.iter().map(|t| t.slot).collect();
            let (hidden, order) = gather(&encoded, &slots, Part::Visual);
            let f = config.feature_dim;
            let r = order.len();
            let target: Vec<f32> = order.iter().flat_map(|&i| plan.mrm[i].feature.iter().copied()).collect();
            let target = Tensor::<B, 2>::from_data(TensorData::new(target, [r, f]), device);
            let mut loss = region::regression(self.heads.region_features(hidden.clone()), target);
            let with_classes: Vec<usize> = (0..r).filter(|&k| plan.mrm[order[k]].classes.is_some()).collect();
            if !with_classes.is_empty() {
                if let Some(logits) = self.heads.region_class_logits(hidden) {
                    let c = config.region_classes;
                    let mut probs = Vec::with_capacity(with_classes.len() * c);
                    for &k in &with_classes {
                        probs.extend(plan.mrm[order[k]].classes.iter().flatten().copied());
                    }
                    let plnp: f32 = probs.iter().filter(|&&p| p > 0.0).map(|&p| p * p.ln()).sum();
                    let idx = int(with_classes.iter().map(|&k| k as i64).collect());
                    let target = Tensor::<B, 2>::from_data(TensorData::new(probs, [with_classes.len(), c]), device);
                    loss = loss + region::kl_to_classes(logits.select(0, idx), target, plnp);
                }
            }
            out.push(ObjectiveLoss {
                objective: Objective::Mrm,
                loss,
                count: r,
            });
        }
        if !plan.cmcl.pairs.is_empty() {
            let (texts, text_order) = gather(&encoded, &plan.cmcl.texts, Part::Text);
            let (images, image_order) = gather(&encoded, &plan.cmcl.images, Part::Visual);
            let texts = self.heads.text_embedding(texts);
            let images = self.heads.image_embedding(images);
            // Position of each original candidate in the gathered order.
            let text_at = inverse(&text_order);
            let image_at = inverse(&image_order);
            let pairs = &plan.cmcl.pairs;
            let image_anchors = int(pairs.iter().map(|p| image_at[p.image] as i64).collect());
            let text_anchors = int(pairs.iter().map(|p| text_at[p.caption] as i64).collect());
            let i2t: Vec<Vec<usize>> = pairs
                .iter()
                .map(|p| p.positive_texts.iter().map(|&j| text_at[j]).collect())
                .collect();
            let t2i: Vec<Vec<usize>> = pairs
                .iter()
                .map(|p| p.positive_images.iter().map(|&j| image_at[j]).collect())
                .collect();
            let scale = self.heads.logit_scale();
            let a = contrastive::group_info_nce(images.clone().select(0, image_anchors), texts.clone(), scale.clone(), &i2t);
            let b = contrastive::group_info_nce(texts.select(0, text_anchors), images, scale, &t2i);
            out.push(ObjectiveLoss {
                objective: Objective::Cmcl,
                loss: (a + b).div_scalar(2.0),
                count: pairs.len(),
            });
        }
        if !plan.itm.is_empty() {
            let (logits, order) = self.itm_logits(&encoded, plan);
            let labels: Vec<bool> = order.iter().map(|&i| plan.itm[i].matched).collect();
            out.push(ObjectiveLoss {
                objective: Objective::Itm,
                loss: matching::binary_cross_entropy(logits, &labels),
                count: labels.len(),
            });
        }
        out
    }

    /// The ITM head over the pooled `[CLS]` and `[IMG]` states of the plan's matching rows,
    /// with, for each logit, the index of its target in `plan.itm`.
    ///
    /// # Shapes
    /// - output: `[itm targets]`
    fn itm_logits(&self, encoded: &[Option<Encoded<B>>; 3], plan: &Plan) -> (Tensor<B, 1>, Vec<usize>) {
        let slots: Vec<Slot> = plan.itm.iter().map(|m| Slot { group: JOINT, row: m.row, pos: 0 }).collect();
        let (cls, order) = gather(encoded, &slots, Part::Text);
        let (img, _) = gather(encoded, &slots, Part::Visual);
        (self.heads.match_logits(cls, img), order)
    }

    /// Image-text matching logits of the plan's ITM targets, in target order (higher =
    /// more likely a pair). The plan must have at least one ITM target.
    ///
    /// # Shapes
    /// - output: `[itm targets]`
    pub fn match_logits(&self, plan: &Plan, config: &ModelConfig, settings: &TrainSettings, device: &B::Device) -> Tensor<B, 1> {
        let encoded = self.encode_plan(plan, config, settings, device);
        let (logits, order) = self.itm_logits(&encoded, plan);
        let idx: Vec<i64> = inverse(&order).iter().map(|&i| i as i64).collect();
        let n = idx.len();
        logits.select(0, Tensor::from_data(TensorData::new(idx, [n]), device))
    }

    /// Pooled, projected, L2-normalised text vectors of the plan's text candidates, in
    /// candidate order.
    ///
    /// # Shapes
    /// - output: `[candidates, pooled]`
    pub fn pooled_texts(&self, plan: &Plan, config: &ModelConfig, settings: &TrainSettings, device: &B::Device) -> Tensor<B, 2> {
        let encoded = self.encode_plan(plan, config, settings, device);
        let (texts, order) = gather(&encoded, &plan.cmcl.texts, Part::Text);
        let emb = self.heads.text_embedding(texts);
        let at = inverse(&order);
        let idx: Vec<i64> = at.iter().map(|&i| i as i64).collect();
        let n = idx.len();
        emb.select(0, Tensor::from_data(TensorData::new(idx, [n]), device))
    }

    /// Pooled, projected, L2-normalised image vectors of the plan's image candidates.
    ///
    /// # Shapes
    /// - output: `[candidates, pooled]`
    pub fn pooled_images(&self, plan: &Plan, config: &ModelConfig, settings: &TrainSettings, device: &B::Device) -> Tensor<B, 2> {
        let encoded = self.encode_plan(plan, config, settings, device);
        let (images, order) = gather(&encoded, &plan.cmcl.images, Part::Visual);
        let emb = self.heads.image_embedding(images);
        let at = inverse(&order);
        let idx: Vec<i64> = at.iter().map(|&i| i as i64).collect();
        let n = idx.len();
        emb.select(0, Tensor::from_data(TensorData::new(idx, [n]), device))
    }
}

/// Forces every parameter's lazy initialisation.
struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// `at[original] = gathered position` for a permutation `order[gathered] = original`.
fn inverse(order: &[usize]) -> Vec<usize> {
    let mut at = vec![0; order.len()];
    for (pos, &orig) in order.iter().enumerate() {
        at[orig] = pos;
    }
    at
}

/// Gathers the hidden states at `slots` (grouped by encoder call, one `select` per group).
/// Returns the states and, for each gathered row, the index of its slot in `slots`.
///
/// # Shapes
/// - output: `[slots, hidden]`
fn gather<B: Backend>(encoded: &[Option<Encoded<B>>; 3], slots: &[Slot], part: Part) -> (Tensor<B, 2>, Vec<usize>) {
    let mut pieces = Vec::new();
    let mut order = Vec::with_capacity(slots.len());
    for (g, enc) in encoded.iter().enumerate() {
        let Some(enc) = enc else { continue };
        let (states, stride) = match part {
            Part::Text => (&enc.text, enc.t),
            Part::Visual => (&enc.visual, enc.n),
        };
        let Some(states) = states else { continue };
        let mut idx = Vec::new();
        for (i, s) in slots.iter().enumerate().filter(|(_, s)| s.group == g) {
            idx.push((s.row * stride + s.pos) as i64);
            order.push(i);
        }
        if idx.is_empty() {
            continue;
        }
        let n = idx.len();
        let device = states.device();
        pieces.push(states.clone().select(0, Tensor::from_data(TensorData::new(idx, [n]), &device)));
    }
    assert_eq!(order.len(), slots.len(), "every planned slot points into an encoded group");
    let out = if pieces.len() == 1 {
        pieces.remove(0)
    } else {
        Tensor::cat(pieces, 0)
    };
    (out, order)
}

impl<B: Backend> PretrainModel<B> {
    /// The UNIMO backbone (`None` for ViLBERT), for generation.
    pub fn unimo(&self) -> Option<&UnimoBackbone<B>> {
        self.unimo.as_ref()
    }
}
