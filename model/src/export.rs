//! The model outside the daemon: weights as `model.safetensors` with stable Hugging Face
//! style tensor names, and back (warm starts).
//!
//! Export goes through `burn-store`: the module's tensors are collected with
//! [`BurnToPyTorchAdapter`] (Linear weights transposed to PyTorch's `[out, in]`, LayerNorm
//! `gamma`/`beta` renamed `weight`/`bias`), then renamed by the regular expressions of
//! [`NAME_PATTERNS`] (a [`KeyRemapper`]). Import inverts exactly that: every tensor name the
//! model would export is mapped back to its module path, and the file is applied with
//! [`PyTorchToBurnAdapter`] (which transposes Linear weights back). The name table is documented in `docs/export.md`.

use std::collections::{BTreeMap, HashMap};

use burn::module::Module;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn_store::{
    ApplyError, BurnToPyTorchAdapter, IdentityAdapter, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore,
};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::model::PretrainModel;
use crate::trainer::TrainerState;

type Bytes = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// Module path (after the PyTorch adapter) to exported name, applied in order; each pattern
/// rewrites what the previous ones produced. `L` below is `layer` or `v_layer`.
pub const NAME_PATTERNS: &[(&str, &str)] = &[
    // Embeddings (both architectures).
    (r"^(?:unimo|vilbert)\.text\.word\.weight$", "embeddings.word_embeddings.weight"),
    (r"^(?:unimo|vilbert)\.text\.position\.weight$", "embeddings.position_embeddings.weight"),
    (r"^(?:unimo|vilbert)\.text\.norm\.", "embeddings.LayerNorm."),
    (r"^(?:unimo|vilbert)\.visual\.feature\.", "visual_embeddings.feature_embeddings."),
    (r"^(?:unimo|vilbert)\.visual\.location\.", "visual_embeddings.location_embeddings."),
    (r"^(?:unimo|vilbert)\.visual\.norm\.", "visual_embeddings.LayerNorm."),
    // Layer stacks: UNIMO's encoder, ViLBERT's text, visual and co-attention streams.
    (r"^unimo\.encoder\.layers\.(\d+)\.", "encoder.layer.$1."),
    (r"^unimo\.encoder\.final_norm\.", "encoder.final_layer_norm."),
    (r"^vilbert\.text_layers\.(\d+)\.", "encoder.layer.$1."),
    (r"^vilbert\.visual_layers\.(\d+)\.", "encoder.v_layer.$1."),
    (r"^vilbert\.co_layers\.(\d+)\.", "encoder.c_layer.$1."),
    (r"^vilbert\.text_norm\.", "encoder.final_layer_norm."),
    (r"^vilbert\.visual_norm\.", "encoder.final_v_layer_norm."),
    // Inside a Transformer layer (BERT names).
    (r"^(encoder\.(?:layer|v_layer)\.\d+)\.attention\.attention\.(query|key|value)\.", "$1.attention.self.$2."),
    (r"^(encoder\.(?:layer|v_layer)\.\d+)\.attention\.attention\.output\.", "$1.attention.output.dense."),
    (r"^(encoder\.(?:layer|v_layer)\.\d+)\.attention\.norm\.", "$1.attention.output.LayerNorm."),
    (r"^(encoder\.(?:layer|v_layer)\.\d+)\.ffn\.inner\.", "$1.intermediate.dense."),
    (r"^(encoder\.(?:layer|v_layer)\.\d+)\.ffn\.outer\.", "$1.output.dense."),
    (r"^(encoder\.(?:layer|v_layer)\.\d+)\.ffn\.norm\.", "$1.output.LayerNorm."),
    // Inside a ViLBERT co-attention block: `text_attention` = text queries over visual keys.
    (r"^(encoder\.c_layer\.\d+)\.text_attends_visual\.attention\.(query|key|value)\.", "$1.text_attention.self.$2."),
    (r"^(encoder\.c_layer\.\d+)\.text_attends_visual\.attention\.output\.", "$1.text_attention.output.dense."),
    (r"^(encoder\.c_layer\.\d+)\.text_attends_visual\.norm\.", "$1.text_attention.output.LayerNorm."),
    (r"^(encoder\.c_layer\.\d+)\.visual_attends_text\.attention\.(query|key|value)\.", "$1.visual_attention.self.$2."),
    (r"^(encoder\.c_layer\.\d+)\.visual_attends_text\.attention\.output\.", "$1.visual_attention.output.dense."),
    (r"^(encoder\.c_layer\.\d+)\.visual_attends_text\.norm\.", "$1.visual_attention.output.LayerNorm."),
    (r"^(encoder\.c_layer\.\d+)\.(text|visual)_ffn\.inner\.", "$1.${2}_intermediate.dense."),
    (r"^(encoder\.c_layer\.\d+)\.(text|visual)_ffn\.outer\.", "$1.${2}_output.dense."),
    (r"^(encoder\.c_layer\.\d+)\.(text|visual)_ffn\.norm\.", "$1.${2}_output.LayerNorm."),
    // Pretraining heads.
    (r"^heads\.mlm_transform\.", "cls.predictions.transform.dense."),
    (r"^heads\.mlm_norm\.", "cls.predictions.transform.LayerNorm."),
    (r"^heads\.mlm_bias$", "cls.predictions.bias"),
    (r"^heads\.mrm_feature\.", "cls.regions.feature.dense."),
    (r"^heads\.mrm_classes\.", "cls.regions.classes.dense."),
    (r"^heads\.project_text\.", "text_projection."),
    (r"^heads\.project_image\.", "image_projection."),
    (r"^heads\.logit_scale$", "logit_scale"),
    (r"^heads\.itm_text\.", "itm.text_projection."),
    (r"^heads\.itm_image\.", "itm.image_projection."),
    (r"^heads\.itm\.", "itm.classifier."),
];

/// The export renaming as a `burn-store` remapper.
pub fn name_remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(NAME_PATTERNS.to_vec()).expect("the name patterns are valid regular expressions")
}

/// One tensor of the model as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorName {
    /// Exported (Hugging Face style) name.
    pub name: String,
    /// The module path in burn (`heads.project_text.weight`, `...norm.gamma`).
    pub burn_path: String,
    /// Module path after the PyTorch adapter (`...norm.weight`).
    adapted_path: String,
    /// Shape as exported (Linear weights `[out, in]`).
    pub shape: Vec<usize>,
    /// A Linear layer's weight (transposed on export and import).
    linear_weight: bool,
}

/// The exported name and shape of every tensor of `model`, in module order.
pub fn tensor_names<B: Backend>(model: &PretrainModel<B>) -> Vec<TensorName> {
    let plain = model.collect(None, Some(Box::new(IdentityAdapter)), false);
    let adapted = model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), false);
    let remapper = name_remapper();
    let patterns = remapper.to_regex_pairs();
    plain
        .iter()
        .zip(&adapted)
        .map(|(p, a)| {
            let adapted_path = a.full_path();
            let mut name = adapted_path.clone();
            for (re, to) in &patterns {
                if re.is_match(&name) {
                    name = re.replace_all(&name, to.as_str()).into_owned();
                }
            }
            let linear_weight = a.module_type().as_deref() == Some("Struct:Linear") && adapted_path.ends_with(".weight");
            TensorName { name, burn_path: p.full_path(), adapted_path, shape: a.shape.to_vec(), linear_weight }
        })
        .collect()
}

/// `model.safetensors` bytes of `model` (f32, names of [`NAME_PATTERNS`], the extra
/// `metadata` in the file header).
pub fn to_safetensors<B: Backend>(model: &PretrainModel<B>, metadata: &[(&str, String)]) -> Result<Vec<u8>, ModelError> {
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(name_remapper());
    for (k, v) in metadata {
        store = store.metadata(*k, v.clone());
    }
    model
        .save_into(&mut store)
        .map_err(|e| ModelError::State(format!("safetensors export: {e}")))?;
    store
        .get_bytes()
        .map_err(|e| ModelError::State(format!("safetensors export: {e}")))
}

/// What loading a safetensors file into a model did (exported names throughout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors of the model set from the file.
    pub loaded: Vec<String>,
    /// Tensors of the model the file did not provide (left at their initialisation).
    pub left: Vec<String>,
    /// Tensors of the file the model has no place for (names after the prefix map).
    pub unused: Vec<String>,
    /// Tensors of the file that no prefix of the map selected.
    pub ignored: usize,
}

/// Marks every name of the file before the prefix map runs, so that a name no prefix of the
/// map matches can never collide with a model tensor.
const UNMAPPED: &str = "unmapped~";

/// `s` as a literal inside a regular expression.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Loads `bytes` (a safetensors file with the exported names, or any names when `prefix_map`
/// rewrites them) into `model`.
///
/// With an empty `prefix_map` the load is strict: every tensor of the model must be in the
/// file and every tensor of the file must belong to the model. With a map (source prefix ->
/// exported-name prefix, for example `bert.encoder.` -> `encoder.`), only the file's tensors
/// whose names start with a source prefix are used, and the model's other tensors keep their
/// values. In both cases a tensor whose shape differs is an error naming it.
pub fn load_safetensors<B: Backend>(
    mut model: PretrainModel<B>,
    bytes: Vec<u8>,
    prefix_map: &BTreeMap<String, String>,
) -> Result<(PretrainModel<B>, LoadReport), ModelError> {
    let names = tensor_names(&model);
    let mut patterns: Vec<(String, String)> = Vec::new();
    if !prefix_map.is_empty() {
        patterns.push(("^".into(), UNMAPPED.into()));
        // Longest source prefix first, so that a specific rule beats a general one.
        let mut rules: Vec<_> = prefix_map.iter().collect();
        rules.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        for (from, to) in rules {
            patterns.push((format!("^{}{}", escape(UNMAPPED), escape(from)), to.replace('$', "$$")));
        }
    }
    // Straight to the module path (LayerNorm `gamma`/`beta` included): the adapter then only
    // transposes Linear weights.
    for n in &names {
        patterns.push((format!("^{}$", escape(&n.name)), n.burn_path.replace('$', "$$")));
    }
    let remapper = KeyRemapper::from_patterns(patterns)
        .map_err(|e| ModelError::InvalidConfig(format!("init map: {e}")))?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .remap(remapper)
        .with_from_adapter(PyTorchToBurnAdapter)
        .allow_partial(true)
        .validate(false);
    let result = model
        .load_from(&mut store)
        .map_err(|e| ModelError::State(format!("reading safetensors: {e}")))?;
    let by_burn: HashMap<&str, &TensorName> = names.iter().map(|n| (n.burn_path.as_str(), n)).collect();
    let by_adapted: HashMap<&str, &TensorName> = names.iter().map(|n| (n.adapted_path.as_str(), n)).collect();
    let exported = |path: &str| {
        by_burn
            .get(path)
            .or_else(|| by_adapted.get(path))
            .map_or_else(|| path.to_string(), |n| n.name.clone())
    };
    if let Some(e) = result.errors.first() {
        let msg = match e {
            ApplyError::ShapeMismatch { path, expected, found } => {
                let n = by_burn.get(path.as_str()).or_else(|| by_adapted.get(path.as_str()));
                let (name, want) = match n {
                    Some(n) => (n.name.clone(), n.shape.clone()),
                    None => (path.clone(), expected.to_vec()),
                };
                // `found` is after the adapter (a Linear weight transposed back): report it
                // in the file's orientation.
                let mut got = found.to_vec();
                if n.is_some_and(|n| n.linear_weight) {
                    got.reverse();
                }
                format!("tensor {name}: shape {got:?} in the file, the model needs {want:?}")
            }
            other => format!("{other}"),
        };
        return Err(ModelError::State(msg));
    }
    // Names the map did not select keep their marker: they were never asked for.
    let (ignored, unused): (Vec<&String>, Vec<&String>) =
        result.unused.iter().partition(|u| u.starts_with(UNMAPPED));
    let report = LoadReport {
        loaded: result.applied.iter().map(|p| exported(p)).collect(),
        left: result.missing.iter().map(|(p, _)| exported(p)).collect(),
        unused: unused.into_iter().cloned().collect(),
        ignored: ignored.len(),
    };
    if prefix_map.is_empty() {
        if !report.left.is_empty() {
            return Err(ModelError::State(format!(
                "{} tensor(s) of the model are missing from the file: {}",
                report.left.len(),
                preview(&report.left)
            )));
        }
        if !report.unused.is_empty() {
            return Err(ModelError::State(format!(
                "{} tensor(s) of the file do not belong to this model: {}",
                report.unused.len(),
                preview(&report.unused)
            )));
        }
    } else if report.loaded.is_empty() {
        return Err(ModelError::State(
            "the init map selected no tensor of the file (check its source prefixes)".into(),
        ));
    }
    Ok((model, report))
}

fn preview(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    let more = names.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// The configuration and weights of a saved trainer state (no optimizer).
pub fn model_from_state<B: Backend>(state: &TrainerState, device: &B::Device) -> Result<(ModelConfig, PretrainModel<B>), ModelError> {
    let config = ModelConfig::from_json(&state.config_json)?;
    let recorder = Bytes::default();
    let record = Recorder::<B>::load::<<PretrainModel<B> as Module<B>>::Record>(&recorder, state.model.clone(), device)
        .map_err(|e| ModelError::State(format!("model: {e}")))?;
    let model = PretrainModel::<B>::new(&config, device).load_record(record);
    Ok((config, model))
}

/// `state` with its weights replaced by `model`'s (same bytes format as [`Trainer::save`]).
///
/// [`Trainer::save`]: crate::Trainer::save
pub fn with_weights<B: Backend>(mut state: TrainerState, model: &PretrainModel<B>) -> Result<TrainerState, ModelError> {
    let recorder = Bytes::default();
    state.model = Recorder::<B>::record(&recorder, model.clone().into_record(), ())
        .map_err(|e| ModelError::State(format!("model: {e}")))?;
    Ok(state)
}
