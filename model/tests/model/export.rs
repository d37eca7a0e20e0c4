//! Safetensors export and import (issue 13): names, layout, strict and partial loads, and a
//! warm start that trains exactly like a resume from the same weights.

use std::collections::{BTreeMap, HashSet};

use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
use unimod_model::export::{load_safetensors, model_from_state, name_remapper, tensor_names, to_safetensors, with_weights};
use unimod_model::model::PretrainModel;
use unimod_model::{Arch, ModelConfig, TrainSettings, Trainer};

use crate::common::{mixed_batch, settings, text, tiny, image, Train};

fn config(arch: Arch) -> ModelConfig {
    let mut c = tiny(arch);
    c.dropout = 0.1;
    c
}

/// A trainer that took two steps (moments and weights away from their initialisation).
fn trained(arch: Arch) -> Trainer<Train> {
    trained_with(config(arch))
}

fn trained_with(config: ModelConfig) -> Trainer<Train> {
    let mut t = Trainer::<Train>::new(config, settings(), Default::default()).expect("trainer");
    for _ in 0..2 {
        let r = t.step(&[mixed_batch()], 1e-3);
        assert!(r.applied, "{r:?}");
    }
    t
}

fn fresh_model(config: &ModelConfig, seed: u64) -> (unimod_model::TrainerState, PretrainModel<Train>) {
    let settings = TrainSettings { seed, ..settings() };
    let state = Trainer::<Train>::new(config.clone(), settings, Default::default()).expect("trainer").save().expect("save");
    let (_, model) = model_from_state::<Train>(&state, &Default::default()).expect("model");
    (state, model)
}

/// Replaces a layer index by `N`, as the table of docs/export.md writes it.
fn generic(name: &str) -> String {
    name.split('.')
        .map(|p| if p.chars().all(|c| c.is_ascii_digit()) { "N" } else { p })
        .collect::<Vec<_>>()
        .join(".")
}

#[test]
fn exported_names_are_hugging_face_style_complete_and_documented() {
    let _serial = crate::common::autodiff_lock();
    let doc = include_str!("../../../docs/export.md");
    for arch in [Arch::Unimo, Arch::Vilbert] {
        for pre_ln in [false, true] {
            let mut c = config(arch);
            c.pre_ln = pre_ln;
            c.region_classes = 5;
            let (_, model) = fresh_model(&c, 1);
            let names = tensor_names(&model);
            let unique: HashSet<&str> = names.iter().map(|n| n.name.as_str()).collect();
            assert_eq!(unique.len(), names.len(), "{arch:?}: exported names collide");
            for n in &names {
                for raw in ["unimo.", "vilbert.", "heads.", ".gamma", ".beta", "attention.attention"] {
                    assert!(!n.name.contains(raw), "{arch:?}: {} -> {} was not renamed", n.burn_path, n.name);
                }
                let g = generic(&n.name);
                assert!(doc.contains(&format!("`{g}`")), "docs/export.md lacks `{g}` ({arch:?})");
            }
            let get = |name: &str| names.iter().find(|n| n.name == name).map(|n| n.shape.clone());
            assert_eq!(get("embeddings.word_embeddings.weight"), Some(vec![c.vocab_size, c.hidden]));
            // Linear weights are [out, in], as in PyTorch.
            assert_eq!(get("encoder.layer.0.intermediate.dense.weight"), Some(vec![c.ffn, c.hidden]));
            assert_eq!(get("visual_embeddings.feature_embeddings.weight"), Some(vec![c.visual_hidden(), c.feature_dim]));
            assert_eq!(get("encoder.final_layer_norm.weight").is_some(), pre_ln);
        }
    }
    // The layout in the file matches the names' shapes and is [out, in].
    let (_, model) = fresh_model(&config(Arch::Unimo), 1);
    let bytes = to_safetensors(&model, &[]).expect("export");
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let file: BTreeMap<String, Vec<usize>> = {
        use burn_store::ModuleStore;
        store.get_all_snapshots().expect("read").iter().map(|(k, v)| (k.clone(), v.shape.to_vec())).collect()
    };
    let expected: BTreeMap<String, Vec<usize>> = tensor_names(&model).into_iter().map(|n| (n.name, n.shape)).collect();
    assert_eq!(file, expected);
}

#[test]
fn safetensors_round_trip_is_exact_for_both_architectures() {
    let _serial = crate::common::autodiff_lock();
    for arch in [Arch::Unimo, Arch::Vilbert] {
        let t = trained(arch);
        let state = t.save().expect("save");
        let (c, model) = model_from_state::<Train>(&state, &Default::default()).expect("model");
        let bytes = to_safetensors(&model, &[("unimod_version", "test".into())]).expect("export");
        // Into a model with other random weights.
        let (other_state, other) = fresh_model(&c, 99);
        let (loaded, report) = load_safetensors(other, bytes, &BTreeMap::new()).expect("strict load");
        assert!(report.left.is_empty() && report.unused.is_empty(), "{report:?}");
        assert_eq!(report.loaded.len(), tensor_names(&model).len());
        let back = Trainer::<Train>::load(&with_weights(other_state, &loaded).expect("state"), settings(), Default::default())
            .expect("load");
        let texts = vec![text(1, 6), text(2, 9)];
        let images = vec![image(1), image(2)];
        assert_eq!(back.embed_texts(&texts), t.embed_texts(&texts), "{arch:?}");
        assert_eq!(back.embed_images(&images), t.embed_images(&images), "{arch:?}");
        assert_eq!(back.match_scores(&images, &texts, 4), t.match_scores(&images, &texts, 4), "{arch:?}");
    }
}

#[test]
fn warm_start_first_step_equals_a_resume_from_the_same_weights() {
    let _serial = crate::common::autodiff_lock();
    for arch in [Arch::Unimo, Arch::Vilbert] {
        // No dropout: the backend's dropout generator is global, and the other tests of this
        // binary draw from it concurrently.
        let t = trained_with(tiny(arch));
        let mut state = t.save().expect("save");
        let (c, model) = model_from_state::<Train>(&state, &Default::default()).expect("model");
        let bytes = to_safetensors(&model, &[]).expect("export");
        // Warm start: a new lineage (fresh optimizer, step 0) with the exported weights.
        let (fresh_state, fresh) = fresh_model(&c, settings().seed);
        let (loaded, _) = load_safetensors(fresh, bytes, &BTreeMap::new()).expect("load");
        let warm_state = with_weights(fresh_state, &loaded).expect("state");
        assert_eq!(warm_state.steps_applied, 0);
        let batch = [mixed_batch()];
        // Each trainer steps right after it is loaded: loading seeds the backend's (global)
        // dropout generator.
        let mut warm = Trainer::<Train>::load(&warm_state, settings(), Default::default()).expect("warm");
        let a = warm.step(&batch, 1e-3);
        // Resume from the same weights at the same position of the masking and dropout
        // streams (a resume keeps its step count; the warm start begins at 0).
        state.steps_applied = 0;
        let mut resumed = Trainer::<Train>::load(&state, settings(), Default::default()).expect("resume");
        let b = resumed.step(&batch, 1e-3);
        assert!(a.applied && b.applied);
        assert!(a.losses.len() >= 4, "{arch:?}: {:?}", a.losses);
        assert_eq!(a.losses, b.losses, "{arch:?}: first-step losses differ");
        assert_eq!(a.grad_norm, b.grad_norm, "{arch:?}");
    }
}

#[test]
fn shape_mismatch_and_missing_tensors_are_named() {
    let _serial = crate::common::autodiff_lock();
    let (_, model) = fresh_model(&config(Arch::Unimo), 1);
    let bytes = to_safetensors(&model, &[]).expect("export");
    let mut wider = config(Arch::Unimo);
    wider.ffn = 96;
    let (_, target) = fresh_model(&wider, 1);
    let err = load_safetensors(target, bytes.clone(), &BTreeMap::new()).expect_err("shape mismatch").to_string();
    assert!(err.contains("encoder.layer.") && err.contains("intermediate.dense"), "{err}");
    assert!(err.contains("[128, 32]") && err.contains("[96, 32]"), "{err}");
    let mut classes = config(Arch::Unimo);
    classes.region_classes = 4;
    let (_, target) = fresh_model(&classes, 1);
    let err = load_safetensors(target, bytes.clone(), &BTreeMap::new()).expect_err("missing").to_string();
    assert!(err.contains("cls.regions.classes.dense.weight"), "{err}");
    // A file of the other architecture: names of neither side match.
    let (_, vilbert) = fresh_model(&config(Arch::Vilbert), 1);
    let err = load_safetensors(vilbert, bytes, &BTreeMap::new()).expect_err("other arch").to_string();
    assert!(err.contains("missing") || err.contains("belong"), "{err}");
}

#[test]
fn prefix_map_loads_a_text_encoder_and_reports_the_rest() {
    let _serial = crate::common::autodiff_lock();
    // A BERT-style file: the encoder under `bert.encoder.`, the embeddings under
    // `bert.embeddings.`, plus the heads under their own names.
    let source_config = config(Arch::Unimo);
    let (_, source) = fresh_model(&source_config, 5);
    let remapper = name_remapper()
        .add_pattern(r"^encoder\.", "bert.encoder.")
        .and_then(|r| r.add_pattern(r"^embeddings\.", "bert.embeddings."))
        .expect("patterns");
    let mut store = SafetensorsStore::from_bytes(None).with_to_adapter(BurnToPyTorchAdapter).remap(remapper);
    source.save_into(&mut store).expect("save");
    let bytes = store.get_bytes().expect("bytes");

    let (_, target) = fresh_model(&source_config, 6);
    let before = tensor_names(&target);
    let map = BTreeMap::from([("bert.encoder.".to_string(), "encoder.".to_string())]);
    let (loaded, report) = load_safetensors(target.clone(), bytes.clone(), &map).expect("partial load");
    let encoder: Vec<&str> = before.iter().map(|n| n.name.as_str()).filter(|n| n.starts_with("encoder.")).collect();
    assert_eq!(report.loaded.len(), encoder.len(), "{report:?}");
    assert!(report.loaded.iter().all(|n| n.starts_with("encoder.")), "{report:?}");
    assert_eq!(report.left.len(), before.len() - encoder.len());
    assert!(report.left.contains(&"embeddings.word_embeddings.weight".to_string()));
    assert!(report.unused.is_empty(), "{report:?}");
    assert_eq!(report.ignored, before.len() - encoder.len());
    // Loaded tensors carry the source's values, the others keep the target's.
    let value = |m: &PretrainModel<Train>, name: &str| -> Vec<f32> {
        let t = m
            .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
            .into_iter()
            .zip(tensor_names(m))
            .find(|(_, n)| n.name == name)
            .expect("tensor")
            .0;
        t.to_data().expect("data").to_vec().expect("f32")
    };
    let q = "encoder.layer.1.attention.self.query.weight";
    assert_eq!(value(&loaded, q), value(&source, q));
    assert_ne!(value(&loaded, q), value(&target, q));
    let w = "embeddings.word_embeddings.weight";
    assert_eq!(value(&loaded, w), value(&target, w));

    // Two rules: the longer prefix wins; a mapped tensor of the wrong shape is an error.
    let map = BTreeMap::from([
        ("bert.embeddings.".to_string(), "embeddings.".to_string()),
        ("bert.encoder.".to_string(), "encoder.".to_string()),
    ]);
    let (_, report) = load_safetensors(target.clone(), bytes.clone(), &map).expect("two rules");
    assert!(report.loaded.contains(&w.to_string()));
    let mut other_vocab = source_config.clone();
    other_vocab.vocab_size += 3;
    let (_, target) = fresh_model(&other_vocab, 6);
    let err = load_safetensors(target, bytes, &map).expect_err("vocab differs").to_string();
    assert!(err.contains("embeddings.word_embeddings.weight"), "{err}");
}
