//! The CPU side of a training step: validates examples, applies masking, and lays the
//! batch out as at most three encoder calls (text rows, image rows, joint rows) plus the
//! targets of every objective, pointing into those rows.
//!
//! Records of the three kinds share a step (as in UNIMO-2's loss code): a text-only record
//! becomes a text row (MLM or seq2seq), an image-only record an image row (MRM), a pair a
//! masked joint row (MLM on the caption + MRM), unmasked text and image rows for CMCL
//! (with its hard negatives and retrieved extra positives), and joint rows for ITM.

use rand::Rng;

use crate::attention_mask::{MaskKind, MaskRow};
use crate::config::{ModelConfig, Objective};
use crate::example::{Example, ExampleKind, VisualInput};
use crate::masking::{self, anchor_mask, seq2seq_split, span_mask};
use crate::objectives::caption;
use crate::positives;

/// Index of the text-row group.
pub(crate) const TEXT: usize = 0;
/// Index of the image-row group.
pub(crate) const IMAGE: usize = 1;
/// Index of the joint (image then text) group.
pub(crate) const JOINT: usize = 2;

/// One image's rows after truncation and masking.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ImageRows {
    /// Row-major features (masked rows zeroed), `rows x feature_dim`.
    pub(crate) features: Vec<f32>,
    /// Locations, one per row.
    pub(crate) locations: Vec<[f32; 5]>,
}

impl ImageRows {
    /// Number of rows.
    pub(crate) fn rows(&self) -> usize {
        self.locations.len()
    }
}

/// The rows of one encoder call.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Group {
    /// Text of each row (text and joint groups).
    pub(crate) texts: Vec<Vec<u32>>,
    /// Image of each row (image and joint groups).
    pub(crate) images: Vec<ImageRows>,
    /// Visibility rule of each row.
    pub(crate) kinds: Vec<MaskKind>,
}

impl Group {
    /// Number of rows.
    pub(crate) fn rows(&self) -> usize {
        self.kinds.len()
    }

    /// The mask description of each row.
    pub(crate) fn mask_rows(&self) -> Vec<MaskRow> {
        (0..self.rows())
            .map(|r| MaskRow {
                visual: self.images.get(r).map_or(0, ImageRows::rows),
                text: self.texts.get(r).map_or(0, Vec::len),
                kind: self.kinds[r],
            })
            .collect()
    }

    fn push_text(&mut self, ids: Vec<u32>, kind: MaskKind) -> usize {
        self.texts.push(ids);
        self.kinds.push(kind);
        self.kinds.len() - 1
    }

    fn push_image(&mut self, image: ImageRows) -> usize {
        self.images.push(image);
        self.kinds.push(MaskKind::Bidirectional);
        self.kinds.len() - 1
    }

    fn push_joint(&mut self, image: ImageRows, ids: Vec<u32>) -> usize {
        self.images.push(image);
        self.texts.push(ids);
        self.kinds.push(MaskKind::Bidirectional);
        self.kinds.len() - 1
    }
}

/// A position in one group's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Group index ([`TEXT`], [`IMAGE`] or [`JOINT`]).
    pub(crate) group: usize,
    /// Row in the group.
    pub(crate) row: usize,
    /// Position in the row's text (token targets) or visual rows (region targets).
    pub(crate) pos: usize,
}

/// A token to predict (MLM or seq2seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenTarget {
    /// Where the prediction is read.
    pub(crate) slot: Slot,
    /// The id to predict.
    pub(crate) label: u32,
}

/// A masked region to reconstruct.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RegionTarget {
    /// Where the prediction is read.
    pub(crate) slot: Slot,
    /// The original feature row.
    pub(crate) feature: Vec<f32>,
    /// The detector's class distribution, when given and matching the model's class count.
    pub(crate) classes: Option<Vec<f32>>,
}

/// Positives of one pair in the contrastive loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContrastPair {
    /// Index of the pair's image among the image candidates.
    pub(crate) image: usize,
    /// Index of the caption among the text candidates.
    pub(crate) caption: usize,
    /// Text candidates that are positives for the image (caption and retrieved texts).
    pub(crate) positive_texts: Vec<usize>,
    /// Image candidates that are positives for the caption (image and retrieved images).
    pub(crate) positive_images: Vec<usize>,
}

/// The contrastive loss's candidates (pooled from rows) and group structure.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ContrastPlan {
    /// Rows whose pooled `[CLS]` is a text candidate.
    pub(crate) texts: Vec<Slot>,
    /// Rows whose pooled `[IMG]` is an image candidate.
    pub(crate) images: Vec<Slot>,
    /// One entry per pair.
    pub(crate) pairs: Vec<ContrastPair>,
}

/// An image-text matching example: a joint row and whether its caption belongs to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MatchTarget {
    /// Row in the joint group.
    pub(crate) row: usize,
    /// True for the real caption.
    pub(crate) matched: bool,
}

/// Everything one micro-batch needs, on the CPU.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    /// Text, image and joint rows.
    pub(crate) groups: [Group; 3],
    /// MLM targets.
    pub(crate) mlm: Vec<TokenTarget>,
    /// Seq2seq targets.
    pub(crate) seq2seq: Vec<TokenTarget>,
    /// Image-to-text seq2seq (caption) targets.
    pub(crate) caption: Vec<TokenTarget>,
    /// MRM targets.
    pub(crate) mrm: Vec<RegionTarget>,
    /// CMCL structure.
    pub(crate) cmcl: ContrastPlan,
    /// ITM rows.
    pub(crate) itm: Vec<MatchTarget>,
    /// Image-group rows of image-only examples, with their images' keys
    /// ([`positives::image_key`]) and unmasked rows, for UNIMO's image window
    /// ([`crate::memory`]; with CMCL only).
    pub(crate) image_only: Vec<(usize, u64, ImageRows)>,
    /// Examples used.
    pub(crate) samples: usize,
    /// Text tokens of the examples used (primary texts only).
    pub(crate) tokens: usize,
    /// Examples dropped as unusable (ids outside the vocabulary, bad visual shapes, empty).
    pub(crate) dropped: usize,
}

/// Truncates a text to `max` tokens keeping its last token (`[SEP]`); `None` if any id is
/// outside the vocabulary or the text is empty.
fn clean_text(ids: &[u32], config: &ModelConfig) -> Option<Vec<u32>> {
    if ids.is_empty() || ids.iter().any(|&id| id as usize >= config.vocab_size) {
        return None;
    }
    let max = config.max_text_len;
    if ids.len() <= max {
        return Some(ids.to_vec());
    }
    let mut out = ids[..max - 1].to_vec();
    out.push(ids[ids.len() - 1]);
    Some(out)
}

/// An image truncated to `max_objects` rows, or `None` when unusable.
fn clean_image(image: &VisualInput, config: &ModelConfig) -> Option<ImageRows> {
    if image.problem(config.feature_dim).is_some() {
        return None;
    }
    let rows = image.rows().min(config.max_objects);
    Some(ImageRows {
        features: image.features[..rows * image.dim].to_vec(),
        locations: image.locations[..rows].to_vec(),
    })
}

/// Zeroes the masked rows of `image`, recomputes the global row as the mean of the visible
/// regions (so it does not leak the masked ones), and returns the region targets.
fn mask_regions<R: Rng>(
    image: &mut ImageRows,
    source: &VisualInput,
    config: &ModelConfig,
    group: usize,
    row: usize,
    rng: &mut R,
) -> Vec<RegionTarget> {
    let dim = config.feature_dim;
    let masked = anchor_mask(&image.locations, masking::MRM_RATIO, masking::ANCHOR_COVERAGE, rng);
    let classes = source
        .class_probs
        .as_ref()
        .filter(|(c, _)| *c == config.region_classes && config.region_classes > 0);
    let mut targets = Vec::new();
    for (pos, _) in masked.iter().enumerate().filter(|(_, &m)| m) {
        let feature = image.features[pos * dim..(pos + 1) * dim].to_vec();
        image.features[pos * dim..(pos + 1) * dim].fill(0.0);
        targets.push(RegionTarget {
            slot: Slot { group, row, pos },
            feature,
            classes: classes.map(|(c, p)| p[pos * c..(pos + 1) * c].to_vec()),
        });
    }
    if !targets.is_empty() {
        let visible: Vec<usize> = (1..image.rows()).filter(|&r| !masked[r]).collect();
        let mut mean = vec![0.0f32; dim];
        for &r in &visible {
            for (m, v) in mean.iter_mut().zip(&image.features[r * dim..(r + 1) * dim]) {
                *m += v / visible.len() as f32;
            }
        }
        image.features[..dim].copy_from_slice(&mean);
    }
    targets
}

impl Plan {
    /// Plans one micro-batch for `config`'s objectives.
    pub(crate) fn build<R: Rng>(examples: &[Example], config: &ModelConfig, rng: &mut R) -> Plan {
        let mut plan = Plan::default();
        let special = config.special;
        let (mlm, s2s, mrm) = (
            config.uses(Objective::Mlm),
            config.uses(Objective::Seq2seq),
            config.uses(Objective::Mrm),
        );
        let (cmcl, itm) = (config.uses(Objective::Cmcl), config.uses(Objective::Itm));
        // Pairs: collected first so that ITM can pick other pairs' captions as negatives.
        let mut pairs: Vec<(ImageRows, Vec<u32>, &Example)> = Vec::new();
        for example in examples {
            match example.kind() {
                None => plan.dropped += 1,
                Some(ExampleKind::Text) => {
                    let Some(ids) = example.text.as_deref().and_then(|t| clean_text(t, config)) else {
                        plan.dropped += 1;
                        continue;
                    };
                    plan.samples += 1;
                    plan.tokens += ids.len();
                    let use_s2s = s2s && (!mlm || rng.random::<bool>());
                    if use_s2s {
                        let continuation = config.continuation > 0.0 && rng.random::<f32>() < config.continuation;
                        let split = if continuation {
                            caption::continuation_split(&ids, &special, rng)
                        } else {
                            seq2seq_split(&ids, &special, masking::SEQ2SEQ_RATIO, rng)
                        };
                        if let Some(split) = split {
                            let kind = MaskKind::PrefixLm {
                                source_len: split.source_len,
                            };
                            let row = plan.groups[TEXT].push_text(split.input, kind);
                            plan.seq2seq.extend(split.targets.iter().map(|&(pos, label)| TokenTarget {
                                slot: Slot { group: TEXT, row, pos },
                                label,
                            }));
                            continue;
                        }
                    }
                    if mlm {
                        let m = span_mask(&ids, &special, config.vocab_size, masking::MLM_RATIO, rng);
                        if m.targets.is_empty() {
                            continue;
                        }
                        let row = plan.groups[TEXT].push_text(m.input, MaskKind::Bidirectional);
                        plan.mlm.extend(m.targets.iter().map(|&(pos, label)| TokenTarget {
                            slot: Slot { group: TEXT, row, pos },
                            label,
                        }));
                    }
                }
                Some(ExampleKind::Image) => {
                    let Some(source) = example.image.as_ref() else { continue };
                    let Some(mut image) = clean_image(source, config) else {
                        plan.dropped += 1;
                        continue;
                    };
                    plan.samples += 1;
                    if mrm && image.rows() > 1 {
                        let row = plan.groups[IMAGE].rows();
                        if cmcl {
                            plan.image_only.push((row, positives::image_key(&source.features), image.clone()));
                        }
                        let targets = mask_regions(&mut image, source, config, IMAGE, row, rng);
                        plan.groups[IMAGE].push_image(image);
                        plan.mrm.extend(targets);
                    }
                }
                Some(ExampleKind::Pair) => {
                    let ids = example.text.as_deref().and_then(|t| clean_text(t, config));
                    let image = example.image.as_ref().and_then(|i| clean_image(i, config));
                    match (ids, image) {
                        (Some(ids), Some(image)) => {
                            plan.samples += 1;
                            plan.tokens += ids.len();
                            pairs.push((image, ids, example));
                        }
                        _ => plan.dropped += 1,
                    }
                }
            }
        }
        for (image, ids, example) in &pairs {
            if mlm || mrm {
                let mut masked_image = image.clone();
                let row = plan.groups[JOINT].rows();
                if mrm && image.rows() > 1 {
                    let source = example.image.as_ref().expect("pairs have images");
                    let targets = mask_regions(&mut masked_image, source, config, JOINT, row, rng);
                    plan.mrm.extend(targets);
                }
                let mut text = ids.clone();
                if mlm {
                    let m = span_mask(ids, &special, config.vocab_size, masking::MLM_RATIO, rng);
                    plan.mlm.extend(m.targets.iter().map(|&(pos, label)| TokenTarget {
                        slot: Slot { group: JOINT, row, pos },
                        label,
                    }));
                    text = m.input;
                }
                plan.groups[JOINT].push_joint(masked_image, text);
            }
        }
        if config.uses(Objective::Caption) {
            caption::plan_captions(&mut plan, pairs.iter().map(|(image, ids, _)| (image, ids.as_slice())));
        }
        if cmcl && !pairs.is_empty() {
            plan.plan_contrast(&pairs, config);
        }
        if itm {
            // The mismatched caption: the first hard negative, else the next pair's caption
            // that belongs to another image (never a caption of the same image or a copy).
            let keys: Vec<u64> = pairs.iter().map(|(image, _, _)| positives::image_key(&image.features)).collect();
            for (i, (image, ids, example)) in pairs.iter().enumerate() {
                let n = pairs.len();
                let negative = example
                    .hard_negatives
                    .iter()
                    .filter_map(|t| clean_text(t, config))
                    .next()
                    .or_else(|| {
                        (1..n)
                            .map(|d| (i + d) % n)
                            .find(|&j| keys[j] != keys[i] && pairs[j].1 != *ids)
                            .map(|j| pairs[j].1.clone())
                    });
                let row = plan.groups[JOINT].push_joint(image.clone(), ids.clone());
                plan.itm.push(MatchTarget { row, matched: true });
                if let Some(neg) = negative {
                    if &neg != ids {
                        let row = plan.groups[JOINT].push_joint(image.clone(), neg);
                        plan.itm.push(MatchTarget { row, matched: false });
                    }
                }
            }
        }
        plan
    }

    /// Adds the unmasked rows and the group structure of the contrastive loss.
    fn plan_contrast(&mut self, pairs: &[(ImageRows, Vec<u32>, &Example)], config: &ModelConfig) {
        let first_pair = self.cmcl.pairs.len();
        for (image, ids, example) in pairs {
            let image_row = self.groups[IMAGE].push_image(image.clone());
            let text_row = self.groups[TEXT].push_text(ids.clone(), MaskKind::Bidirectional);
            let image_idx = self.cmcl.images.len();
            self.cmcl.images.push(Slot { group: IMAGE, row: image_row, pos: 0 });
            let caption = self.cmcl.texts.len();
            self.cmcl.texts.push(Slot { group: TEXT, row: text_row, pos: 0 });
            let mut positive_texts = vec![caption];
            let mut positive_images = vec![image_idx];
            for extra in example.extra_texts.iter().filter_map(|t| clean_text(t, config)) {
                let row = self.groups[TEXT].push_text(extra, MaskKind::Bidirectional);
                positive_texts.push(self.cmcl.texts.len());
                self.cmcl.texts.push(Slot { group: TEXT, row, pos: 0 });
            }
            for extra in example.extra_images.iter().filter_map(|i| clean_image(i, config)) {
                let row = self.groups[IMAGE].push_image(extra);
                positive_images.push(self.cmcl.images.len());
                self.cmcl.images.push(Slot { group: IMAGE, row, pos: 0 });
            }
            // Hard negatives are candidates of every anchor but positives of none.
            for negative in example.hard_negatives.iter().filter_map(|t| clean_text(t, config)) {
                let row = self.groups[TEXT].push_text(negative, MaskKind::Bidirectional);
                self.cmcl.texts.push(Slot { group: TEXT, row, pos: 0 });
            }
            self.cmcl.pairs.push(ContrastPair {
                image: image_idx,
                caption,
                positive_texts,
                positive_images,
            });
        }
        // Captions of the same image and copies of a pair are positives, never negatives.
        let image_keys: Vec<u64> = self.cmcl.images.iter().map(|s| positives::image_key(&self.groups[s.group].images[s.row].features)).collect();
        let texts: Vec<&[u32]> = self.cmcl.texts.iter().map(|s| self.groups[s.group].texts[s.row].as_slice()).collect();
        positives::share_positives(&mut self.cmcl.pairs[first_pair..], &image_keys, &texts);
    }

    /// Joint rows, one per `(image, text)` combination in order, each an unmasked
    /// bidirectional row with an ITM target (labelled matched; the label is unused when
    /// scoring), for [`crate::model::PretrainModel::match_logits`].
    pub(crate) fn for_matching(pairs: &[(&ImageRows, &[u32])]) -> Plan {
        let mut plan = Plan::default();
        for (image, ids) in pairs {
            let row = plan.groups[JOINT].push_joint((*image).clone(), ids.to_vec());
            plan.itm.push(MatchTarget { row, matched: true });
        }
        plan
    }

    /// Each text truncated to the model's limit, or `None` when unusable (empty, ids
    /// outside the vocabulary), as every plan cleans its inputs.
    pub(crate) fn clean_texts(texts: &[Vec<u32>], config: &ModelConfig) -> Vec<Option<Vec<u32>>> {
        texts.iter().map(|t| clean_text(t, config)).collect()
    }

    /// Each image truncated to the model's limit, or `None` when unusable
    /// ([`VisualInput::problem`]).
    pub(crate) fn clean_images(images: &[VisualInput], config: &ModelConfig) -> Vec<Option<ImageRows>> {
        images.iter().map(|i| clean_image(i, config)).collect()
    }

    /// A plan that only encodes texts, for pooled text embeddings (no masking).
    pub(crate) fn for_texts(texts: &[Vec<u32>], config: &ModelConfig) -> (Plan, Vec<Option<usize>>) {
        let mut plan = Plan::default();
        let mut index = Vec::with_capacity(texts.len());
        for t in texts {
            index.push(clean_text(t, config).map(|ids| {
                let row = plan.groups[TEXT].push_text(ids, MaskKind::Bidirectional);
                plan.cmcl.texts.push(Slot { group: TEXT, row, pos: 0 });
                plan.cmcl.texts.len() - 1
            }));
        }
        (plan, index)
    }

    /// A plan that only encodes images, for pooled image embeddings (no masking).
    pub(crate) fn for_images(images: &[VisualInput], config: &ModelConfig) -> (Plan, Vec<Option<usize>>) {
        let mut plan = Plan::default();
        let mut index = Vec::with_capacity(images.len());
        for i in images {
            index.push(clean_image(i, config).map(|rows| {
                let row = plan.groups[IMAGE].push_image(rows);
                plan.cmcl.images.push(Slot { group: IMAGE, row, pos: 0 });
                plan.cmcl.images.len() - 1
            }));
        }
        (plan, index)
    }
}
