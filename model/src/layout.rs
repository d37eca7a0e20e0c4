//! The tensor shapes of one training step (its *signature*), chosen from a plan.
//!
//! A JIT backend (CUDA, wgpu) compiles and autotunes kernels per distinct shape, so a step
//! whose shapes change with the batch composition (how many texts, images, pairs, masked
//! tokens, ...) keeps compiling. Under [`ShapePolicy::Static`] every size of a step is
//! rounded up to a power of two and never shrinks below what an earlier step of this
//! trainer used (a high-water mark per size); padded rows, targets and candidates are masked
//! out of every loss. A group without rows or an objective without targets in a batch is
//! skipped, as on the CPU (so its parameters get no update). A stationary stream then
//! settles on one signature after a few steps, and a new one appears only when some size
//! exceeds every earlier one or a batch lacks a kind, so a trainer sees few signatures.
//!
//! [`ShapePolicy::Tight`] (the CPU default) pads only sequence lengths to buckets and keeps
//! row and target counts exact: the least arithmetic, for a backend that compiles nothing.

use std::collections::HashSet;

use crate::attention_mask::MaskKind;
use crate::config::{ModelConfig, Objective};
use crate::plan::{Group, Plan, IMAGE, JOINT, TEXT};
use crate::settings::{bucket_len, TrainSettings};

/// How a step's shapes are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShapePolicy {
    /// Sequence lengths bucketed; row and target counts exact.
    #[default]
    Tight,
    /// Every size a power of two (lengths bucketed), never below an earlier step's.
    Static,
}

/// The padded shape of one encoder call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GroupShape {
    /// Rows (0: the group is not encoded).
    pub rows: usize,
    /// Visual length (0 without images).
    pub n: usize,
    /// Text length (0 without texts).
    pub t: usize,
    /// The attention bias is `[rows, 1, l, l]` (per-query rules) rather than `[rows, 1, 1, l]`.
    pub full_mask: bool,
}

/// Every size of one step: the encoder calls and the target counts of each objective
/// (0: the objective is not computed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Text, image and joint encoder calls.
    pub groups: [GroupShape; 3],
    /// MLM token targets.
    pub mlm: usize,
    /// Seq2seq token targets.
    pub seq2seq: usize,
    /// Image-to-text seq2seq (caption) token targets.
    pub caption: usize,
    /// Masked regions.
    pub mrm: usize,
    /// The region class (KL) term is computed.
    pub mrm_classes: bool,
    /// CMCL text candidates.
    pub cmcl_texts: usize,
    /// CMCL image candidates.
    pub cmcl_images: usize,
    /// CMCL pairs (anchors of each direction).
    pub cmcl_pairs: usize,
    /// ITM rows.
    pub itm: usize,
}

impl GroupShape {
    /// The exact shape of `group`: its rows, lengths rounded up to the buckets, and a
    /// per-query mask only when some row needs one.
    pub(crate) fn of(group: &Group, config: &ModelConfig, settings: &TrainSettings) -> Self {
    let rows = group.rows();
    let max_t = group.texts.iter().map(Vec::len).max().unwrap_or(0);
    let max_n = group.images.iter().map(|i| i.rows()).max().unwrap_or(0);
    GroupShape {
        rows,
        t: if group.texts.is_empty() {
            0
        } else {
            bucket_len(&settings.text_buckets, max_t, config.max_text_len)
        },
        n: if group.images.is_empty() {
            0
        } else {
            bucket_len(&settings.object_buckets, max_n, config.max_objects)
        },
        full_mask: group.kinds.iter().any(|k| *k != MaskKind::Bidirectional),
    }
    }
}

impl Layout {
    /// The exact sizes of `plan`, with lengths bucketed ([`ShapePolicy::Tight`]).
    pub(crate) fn tight(plan: &Plan, config: &ModelConfig, settings: &TrainSettings) -> Self {
        let mut groups = [GroupShape::default(); 3];
        for (g, shape) in groups.iter_mut().enumerate() {
            *shape = GroupShape::of(&plan.groups[g], config, settings);
        }
        Self {
            groups,
            mlm: plan.mlm.len(),
            seq2seq: plan.seq2seq.len(),
            caption: plan.caption.len(),
            mrm: plan.mrm.len(),
            mrm_classes: plan.mrm.iter().any(|t| t.classes.is_some()) && config.region_classes > 0,
            cmcl_texts: if plan.cmcl.pairs.is_empty() { 0 } else { plan.cmcl.texts.len() },
            cmcl_images: if plan.cmcl.pairs.is_empty() { 0 } else { plan.cmcl.images.len() },
            cmcl_pairs: plan.cmcl.pairs.len(),
            itm: plan.itm.len(),
        }
    }

    /// Every size at least `other`'s (text and object lengths stay bucket values).
    fn max(self, other: Self) -> Self {
        let mut groups = self.groups;
        for (g, o) in groups.iter_mut().zip(other.groups) {
            *g = GroupShape {
                rows: g.rows.max(o.rows),
                n: g.n.max(o.n),
                t: g.t.max(o.t),
                full_mask: g.full_mask || o.full_mask,
            };
        }
        Self {
            groups,
            mlm: self.mlm.max(other.mlm),
            seq2seq: self.seq2seq.max(other.seq2seq),
            caption: self.caption.max(other.caption),
            mrm: self.mrm.max(other.mrm),
            mrm_classes: self.mrm_classes || other.mrm_classes,
            cmcl_texts: self.cmcl_texts.max(other.cmcl_texts),
            cmcl_images: self.cmcl_images.max(other.cmcl_images),
            cmcl_pairs: self.cmcl_pairs.max(other.cmcl_pairs),
            itm: self.itm.max(other.itm),
        }
    }

    /// Counts rounded up to powers of two (at least `MIN_ROWS` rows, `MIN_TARGETS` targets).
    fn rounded(self, config: &ModelConfig) -> Self {
        let up = |x: usize, min: usize| if x == 0 { 0 } else { x.max(min).next_power_of_two() };
        let mut groups = self.groups;
        for g in &mut groups {
            g.rows = up(g.rows, MIN_ROWS);
        }
        // The text group's mask shape follows the objectives, not the batch: per-query
        // masks whenever seq2seq (prefix LM rows) is trained.
        if groups[TEXT].rows > 0 && config.uses(Objective::Seq2seq) {
            groups[TEXT].full_mask = true;
        }
        // Likewise the joint group's: image-to-text rows whenever captioning is trained.
        if groups[JOINT].rows > 0 && config.uses(Objective::Caption) {
            groups[JOINT].full_mask = true;
        }
        Self {
            groups,
            mlm: up(self.mlm, MIN_TARGETS),
            seq2seq: up(self.seq2seq, MIN_TARGETS),
            caption: up(self.caption, MIN_TARGETS),
            mrm: up(self.mrm, MIN_TARGETS),
            mrm_classes: self.mrm_classes,
            cmcl_texts: up(self.cmcl_texts, MIN_ROWS),
            cmcl_images: up(self.cmcl_images, MIN_ROWS),
            cmcl_pairs: up(self.cmcl_pairs, MIN_ROWS),
            itm: up(self.itm, MIN_ROWS),
        }
    }

    /// `self` without the groups and objectives that `tight` (a plan's exact layout) does
    /// not have: an encoder call without rows or an objective without targets is skipped,
    /// not run on padding alone. (Run on padding alone, its parameters would get zero
    /// gradients instead of none, and AdamW would still move them with its momentum and
    /// weight decay: a different update from the CPU's.)
    fn present_in(mut self, tight: &Self) -> Self {
        for (g, t) in self.groups.iter_mut().zip(&tight.groups) {
            if t.rows == 0 {
                *g = GroupShape::default();
            }
        }
        let keep = |size: usize, real: usize| if real == 0 { 0 } else { size };
        self.mlm = keep(self.mlm, tight.mlm);
        self.seq2seq = keep(self.seq2seq, tight.seq2seq);
        self.caption = keep(self.caption, tight.caption);
        self.mrm = keep(self.mrm, tight.mrm);
        self.mrm_classes = self.mrm_classes && tight.mrm_classes;
        self.cmcl_pairs = keep(self.cmcl_pairs, tight.cmcl_pairs);
        self.cmcl_texts = keep(self.cmcl_texts, tight.cmcl_pairs);
        self.cmcl_images = keep(self.cmcl_images, tight.cmcl_pairs);
        self.itm = keep(self.itm, tight.itm);
        self
    }

    /// A short text form, e.g. for logs: `text 32x0x16 image 16x16x0 joint 32x16x32 mlm 64 ...`.
    pub fn describe(&self) -> String {
        let g = |s: &GroupShape| format!("{}x{}x{}{}", s.rows, s.n, s.t, if s.full_mask { "f" } else { "" });
        format!(
            "text {} image {} joint {} mlm {} seq2seq {} caption {} mrm {}{} cmcl {}/{}/{} itm {}",
            g(&self.groups[TEXT]),
            g(&self.groups[IMAGE]),
            g(&self.groups[JOINT]),
            self.mlm,
            self.seq2seq,
            self.caption,
            self.mrm,
            if self.mrm_classes { "+classes" } else { "" },
            self.cmcl_pairs,
            self.cmcl_texts,
            self.cmcl_images,
            self.itm
        )
    }
}

/// Smallest padded row and candidate count under [`ShapePolicy::Static`].
const MIN_ROWS: usize = 8;
/// Smallest padded target count under [`ShapePolicy::Static`].
const MIN_TARGETS: usize = 16;

/// Chooses each step's layout and remembers the signatures seen.
#[derive(Debug, Clone, Default)]
pub struct Shapes {
    policy: ShapePolicy,
    high_water: Layout,
    seen: HashSet<Layout>,
}

impl Shapes {
    /// A fresh shape chooser.
    pub fn new(policy: ShapePolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// The policy.
    pub fn policy(&self) -> ShapePolicy {
        self.policy
    }

    /// The layout of `plan` under the policy (recorded as seen).
    pub(crate) fn layout(&mut self, plan: &Plan, config: &ModelConfig, settings: &TrainSettings) -> Layout {
        let tight = Layout::tight(plan, config, settings);
        let layout = match self.policy {
            ShapePolicy::Tight => tight,
            ShapePolicy::Static => {
                self.high_water = self.high_water.max(tight.rounded(config));
                self.high_water.present_in(&tight)
            }
        };
        self.seen.insert(layout);
        layout
    }

    /// Distinct layouts seen so far.
    pub fn signatures(&self) -> usize {
        self.seen.len()
    }
}
