//! Model configuration: architecture, size, vocabulary, visual width, objective weights.
//!
//! The configuration is saved as JSON with every checkpoint, so a checkpoint always carries
//! what is needed to rebuild its model. Unknown JSON fields are rejected.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::nn::embeddings::{TextEmbeddingConfig, VisualEmbeddingConfig};
use crate::nn::transformer::TransformerLayerConfig;

/// Which network is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// UNIMO: one single-stream Transformer shared by text, images and pairs.
    Unimo,
    /// ViLBERT: a text stream and a visual stream joined by co-attention blocks.
    Vilbert,
}

impl Arch {
    /// The lowercase name used in configuration files and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Unimo => "unimo",
            Arch::Vilbert => "vilbert",
        }
    }
}

/// Token ids with a special role (taken from the tokenizer by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialTokens {
    /// Padding id; never attended to and never predicted.
    pub pad: u32,
    /// `[CLS]` (RoBERTa `<s>`): first text token, its output is the pooled text vector.
    pub cls: u32,
    /// `[SEP]` (RoBERTa `</s>`): last text token.
    pub sep: u32,
    /// `[MASK]`: replaces masked tokens in masked language modelling.
    pub mask: u32,
    /// `[IMG]`: id reserved for the global image entry (kept for exports; the visual entry
    /// itself is a feature row, not a token).
    pub img: u32,
}

impl SpecialTokens {
    /// Whether `id` is one of the special tokens (never masked, never a random replacement).
    pub fn contains(&self, id: u32) -> bool {
        id == self.pad || id == self.cls || id == self.sep || id == self.mask || id == self.img
    }
}

/// Per-objective loss weights; 0 disables an objective.
///
/// The total loss is `sum(weight * loss)` over the objectives in use, each loss being the
/// mean over its own valid targets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveWeights {
    /// Masked language modelling (text-only records and captions of pairs).
    pub mlm: f32,
    /// Seq2seq (prefix-LM) generation on text-only records; UNIMO only.
    pub seq2seq: f32,
    /// Masked region modelling (feature regression, plus KL when class distributions exist).
    pub mrm: f32,
    /// Cross-modal contrastive learning on pairs; UNIMO only.
    pub cmcl: f32,
    /// Image-text matching (alignment prediction) on pairs.
    pub itm: f32,
    /// Image-to-text seq2seq (captioning) on pairs; UNIMO only.
    pub caption: f32,
}

impl Default for ObjectiveWeights {
    fn default() -> Self {
        Self {
            mlm: 1.0,
            seq2seq: 1.0,
            mrm: 1.0,
            cmcl: 1.0,
            itm: 1.0,
            caption: 1.0,
        }
    }
}

/// Dimensions of ViLBERT's visual stream and co-attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VilbertDims {
    /// Hidden width of the visual stream (also the width of the co-attention and pooled space).
    pub visual_hidden: usize,
    /// Attention heads of the visual stream and of the co-attention.
    pub visual_heads: usize,
    /// FFN width of the visual stream.
    pub visual_ffn: usize,
    /// Number of co-attention blocks; the visual stream has one layer before each, and the
    /// text stream runs `layers - co_layers` layers alone before the first.
    pub co_layers: usize,
}

/// The whole model configuration. Saved as JSON with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Size name: `tiny`, `small`, `base`, `large`, or `custom` for hand-set dimensions.
    pub size: String,
    /// Transformer layers (UNIMO) or text-stream layers (ViLBERT).
    pub layers: usize,
    /// Hidden width (UNIMO) or text-stream width (ViLBERT).
    pub hidden: usize,
    /// Attention heads (of the text stream for ViLBERT).
    pub heads: usize,
    /// Feed-forward width (4 x hidden in the presets).
    pub ffn: usize,
    /// Vocabulary size of the tokenizer.
    pub vocab_size: usize,
    /// Width of a visual feature row (built-in crops or detector features).
    pub feature_dim: usize,
    /// Longest text sequence, `[CLS]` and `[SEP]` included; longer texts are truncated.
    pub max_text_len: usize,
    /// Most visual rows, global `[IMG]` row included; extra regions are dropped.
    pub max_objects: usize,
    /// Dropout probability (embeddings, attention weights, residual branches).
    pub dropout: f64,
    /// Pre-LayerNorm layers (more stable for long continual runs) instead of UNIMO's post-LN.
    pub pre_ln: bool,
    /// LayerNorm epsilon (1e-5 in UNIMO).
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// Standard deviation of the normal weight initialisation (0.02 in UNIMO).
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Number of detector classes for the KL term of masked region modelling (0: no KL head).
    #[serde(default)]
    pub region_classes: usize,
    /// Special token ids.
    pub special: SpecialTokens,
    /// Per-objective loss weights.
    #[serde(default)]
    pub weights: ObjectiveWeights,
    /// ViLBERT visual-stream dimensions (present exactly when `arch` is `vilbert`).
    #[serde(default)]
    pub vilbert: Option<VilbertDims>,
    /// Share of text seq2seq examples whose target is a suffix (prefix -> continuation);
    /// the rest use UNIMO's fragment sampling.
    #[serde(default = "default_continuation")]
    pub continuation: f32,
}

fn default_continuation() -> f32 {
    0.5
}

fn default_ln_eps() -> f64 {
    1e-5
}

fn default_init_std() -> f64 {
    0.02
}

/// `(layers, hidden, heads)` of the named presets.
fn preset_dims(size: &str) -> Option<(usize, usize, usize)> {
    match size {
        "tiny" => Some((2, 128, 2)),
        "small" => Some((4, 256, 4)),
        "base" => Some((12, 768, 12)),
        "large" => Some((24, 1024, 16)),
        _ => None,
    }
}

/// ViLBERT visual stream per preset (base follows the paper: 1024 wide, 8 heads, 6 blocks).
fn vilbert_preset(size: &str) -> Option<VilbertDims> {
    let (visual_hidden, visual_heads, co_layers) = match size {
        "tiny" => (128, 2, 1),
        "small" => (256, 4, 2),
        "base" => (1024, 8, 6),
        "large" => (1024, 16, 6),
        _ => return None,
    };
    Some(VilbertDims {
        visual_hidden,
        visual_heads,
        visual_ffn: 4 * visual_hidden,
        co_layers,
    })
}

impl ModelConfig {
    /// A preset configuration (`tiny`, `small`, `base`, `large`) for the given tokenizer and
    /// visual feature width.
    pub fn preset(
        arch: Arch,
        size: &str,
        vocab_size: usize,
        feature_dim: usize,
        special: SpecialTokens,
    ) -> Result<Self, ModelError> {
        let (layers, hidden, heads) =
            preset_dims(size).ok_or_else(|| ModelError::UnknownSize(size.to_string()))?;
        let vilbert = match arch {
            Arch::Unimo => None,
            Arch::Vilbert => vilbert_preset(size),
        };
        let config = Self {
            arch,
            size: size.to_string(),
            layers,
            hidden,
            heads,
            ffn: 4 * hidden,
            vocab_size,
            feature_dim,
            max_text_len: 128,
            max_objects: 101,
            dropout: 0.1,
            pre_ln: false,
            layer_norm_eps: default_ln_eps(),
            init_std: default_init_std(),
            region_classes: 0,
            special,
            weights: ObjectiveWeights::default(),
            vilbert,
            continuation: default_continuation(),
        };
        config.validate()?;
        Ok(config)
    }

    /// A `custom` configuration with hand-set dimensions (FFN 4 x hidden; ViLBERT's visual
    /// stream as wide as the text stream with one co-attention block per two text layers).
    pub fn custom(
        arch: Arch,
        layers: usize,
        hidden: usize,
        heads: usize,
        vocab_size: usize,
        feature_dim: usize,
        special: SpecialTokens,
    ) -> Result<Self, ModelError> {
        let vilbert = match arch {
            Arch::Unimo => None,
            Arch::Vilbert => Some(VilbertDims {
                visual_hidden: hidden,
                visual_heads: heads,
                visual_ffn: 4 * hidden,
                co_layers: layers.div_ceil(2).max(1),
            }),
        };
        let config = Self {
            size: "custom".to_string(),
            layers,
            hidden,
            heads,
            ffn: 4 * hidden,
            vilbert,
            ..Self::preset(arch, "tiny", vocab_size, feature_dim, special)?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the dimensions fit together; every constructor calls it.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::InvalidConfig(msg));
        if self.layers == 0 || self.hidden == 0 || self.heads == 0 || self.ffn == 0 {
            return bad("layers, hidden, heads and ffn must be positive".into());
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return bad(format!(
                "hidden ({}) must be a multiple of heads ({})",
                self.hidden, self.heads
            ));
        }
        if self.vocab_size < 2 || self.feature_dim == 0 {
            return bad("vocab_size must be at least 2 and feature_dim positive".into());
        }
        for (name, id) in [
            ("pad", self.special.pad),
            ("cls", self.special.cls),
            ("sep", self.special.sep),
            ("mask", self.special.mask),
            ("img", self.special.img),
        ] {
            if id as usize >= self.vocab_size {
                return bad(format!("special token {name} = {id} is outside the vocabulary"));
            }
        }
        if self.max_text_len < 3 || self.max_objects < 2 {
            return bad("max_text_len must be at least 3 and max_objects at least 2".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        let w = self.weights;
        for (name, v) in [
            ("mlm", w.mlm),
            ("seq2seq", w.seq2seq),
            ("mrm", w.mrm),
            ("cmcl", w.cmcl),
            ("itm", w.itm),
            ("caption", w.caption),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(format!("weight of {name} must be finite and >= 0, got {v}"));
            }
        }
        if !(0.0..=1.0).contains(&self.continuation) {
            return bad(format!("continuation share {} must be in [0, 1]", self.continuation));
        }
        match (self.arch, &self.vilbert) {
            (Arch::Unimo, Some(_)) => return bad("vilbert dims given for arch unimo".into()),
            (Arch::Vilbert, None) => return bad("arch vilbert needs vilbert dims".into()),
            (Arch::Vilbert, Some(v)) => {
                if v.visual_hidden == 0 || v.visual_heads == 0 || v.visual_ffn == 0 {
                    return bad("vilbert visual dims must be positive".into());
                }
                if !v.visual_hidden.is_multiple_of(v.visual_heads) {
                    return bad("vilbert visual_hidden must be a multiple of visual_heads".into());
                }
                if v.co_layers == 0 || v.co_layers > self.layers {
                    return bad(format!(
                        "vilbert co_layers ({}) must be in 1..={}",
                        v.co_layers, self.layers
                    ));
                }
            }
            (Arch::Unimo, None) => {}
        }
        Ok(())
    }

    /// Serialises the configuration as pretty JSON (stored with every checkpoint).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a ModelConfig always serialises")
    }

    /// Parses and validates a configuration saved by [`ModelConfig::to_json`].
    pub fn from_json(json: &str) -> Result<Self, ModelError> {
        let config: Self = serde_json::from_str(json)?;
        config.validate()?;
        Ok(config)
    }

    /// Whether an objective is trained by this configuration (weight > 0 and supported by
    /// the architecture).
    pub fn uses(&self, objective: Objective) -> bool {
        let w = self.weights;
        match objective {
            Objective::Mlm => w.mlm > 0.0,
            Objective::Seq2seq => self.arch == Arch::Unimo && w.seq2seq > 0.0,
            Objective::Mrm => w.mrm > 0.0,
            Objective::Cmcl => self.arch == Arch::Unimo && w.cmcl > 0.0,
            Objective::Itm => w.itm > 0.0,
            Objective::Caption => self.arch == Arch::Unimo && w.caption > 0.0,
        }
    }

    /// Width of the visual hidden states.
    pub fn visual_hidden(&self) -> usize {
        self.vilbert.map_or(self.hidden, |v| v.visual_hidden)
    }

    /// Width of the shared (pooled, projected) space used by CMCL, ITM and retrieval.
    pub fn pooled_dim(&self) -> usize {
        self.visual_hidden()
    }

    /// The layers of the text stream (UNIMO: of the shared Transformer).
    pub(crate) fn text_layer(&self) -> TransformerLayerConfig {
        TransformerLayerConfig::new(self.hidden, self.heads, self.ffn)
            .with_dropout(self.dropout)
            .with_init_std(self.init_std)
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_pre_ln(self.pre_ln)
    }

    /// The layers of ViLBERT's visual stream (UNIMO: the shared Transformer's).
    pub(crate) fn visual_layer(&self) -> TransformerLayerConfig {
        match self.vilbert {
            Some(v) => TransformerLayerConfig {
                d_model: v.visual_hidden,
                heads: v.visual_heads,
                d_ffn: v.visual_ffn,
                ..self.text_layer()
            },
            None => self.text_layer(),
        }
    }

    /// The text embedding.
    pub(crate) fn text_embedding(&self) -> TextEmbeddingConfig {
        TextEmbeddingConfig::new(self.vocab_size, self.max_text_len, self.hidden)
            .with_dropout(self.dropout)
            .with_init_std(self.init_std)
            .with_layer_norm_eps(self.layer_norm_eps)
    }

    /// The visual embedding (at the width of the visual hidden states).
    pub(crate) fn visual_embedding(&self) -> VisualEmbeddingConfig {
        VisualEmbeddingConfig::new(self.feature_dim, self.visual_hidden())
            .with_dropout(self.dropout)
            .with_init_std(self.init_std)
            .with_layer_norm_eps(self.layer_norm_eps)
    }
}

/// The pretraining objectives, in reporting order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// Masked language modelling.
    Mlm,
    /// Seq2seq generation (prefix LM).
    Seq2seq,
    /// Masked region modelling.
    Mrm,
    /// Cross-modal contrastive learning.
    Cmcl,
    /// Image-text matching.
    Itm,
    /// Image-to-text seq2seq (captioning).
    Caption,
}

impl Objective {
    /// All objectives, in reporting order.
    pub const ALL: [Objective; 6] = [
        Objective::Mlm,
        Objective::Seq2seq,
        Objective::Mrm,
        Objective::Cmcl,
        Objective::Itm,
        Objective::Caption,
    ];

    /// The name used in reports and in the `objective` metric label.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Mlm => "mlm",
            Objective::Seq2seq => "seq2seq",
            Objective::Mrm => "mrm",
            Objective::Cmcl => "cmcl",
            Objective::Itm => "itm",
            Objective::Caption => "caption",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special() -> SpecialTokens {
        SpecialTokens {
            pad: 1,
            cls: 0,
            sep: 2,
            mask: 3,
            img: 4,
        }
    }

    #[test]
    fn presets_have_the_documented_sizes() {
        let c = ModelConfig::preset(Arch::Unimo, "base", 50265, 2048, special()).expect("base");
        assert_eq!((c.layers, c.hidden, c.heads, c.ffn), (12, 768, 12, 3072));
        let c = ModelConfig::preset(Arch::Unimo, "tiny", 100, 8, special()).expect("tiny");
        assert_eq!((c.layers, c.hidden, c.heads), (2, 128, 2));
        let v = ModelConfig::preset(Arch::Vilbert, "base", 100, 8, special()).expect("vilbert");
        assert_eq!(v.vilbert.map(|d| d.visual_hidden), Some(1024));
        assert!(matches!(
            ModelConfig::preset(Arch::Unimo, "huge", 100, 8, special()),
            Err(ModelError::UnknownSize(_))
        ));
    }

    #[test]
    fn json_round_trips_and_rejects_unknown_fields() {
        let c = ModelConfig::preset(Arch::Vilbert, "small", 300, 12, special()).expect("small");
        let back = ModelConfig::from_json(&c.to_json()).expect("parse");
        assert_eq!(c, back);
        let mut value: serde_json::Value = serde_json::from_str(&c.to_json()).expect("json");
        value["surprise"] = serde_json::json!(1);
        assert!(ModelConfig::from_json(&value.to_string()).is_err());
        assert!(c.to_json().contains("\"vilbert\""));
    }

    #[test]
    fn validation_catches_inconsistent_dims() {
        let mut c = ModelConfig::preset(Arch::Unimo, "tiny", 100, 8, special()).expect("tiny");
        c.heads = 3;
        assert!(matches!(c.validate(), Err(ModelError::InvalidConfig(_))));
        let mut c = ModelConfig::preset(Arch::Unimo, "tiny", 100, 8, special()).expect("tiny");
        c.special.mask = 100;
        assert!(c.validate().is_err());
    }
}
