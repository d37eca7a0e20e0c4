//! A checkpoint written by older code still loads: `tests/fixtures/` holds, per architecture,
//! a trainer state saved after one step (config JSON, model and optimizer records, burn's
//! named MessagePack) and its safetensors export, as written before the blocks moved to
//! burn's Config/Module idiom (issue 10). The state must load, re-save to the same model
//! bytes, export the same names to the same bytes, accept the old export strictly, and take
//! the next step with the losses the old code reported.
//!
//! `UNIMOD_WRITE_FIXTURES=1 cargo test -p unimod-model --test model compat::write -- --ignored`
//! rewrites the fixtures (only when the record layout is meant to change: old checkpoints
//! would then no longer load).

use std::collections::BTreeMap;
use std::path::PathBuf;

use unimod_model::export::{load_safetensors, model_from_state, tensor_names, to_safetensors};
use unimod_model::{Arch, ModelConfig, Trainer, TrainerState};

use crate::common::{mixed_batch, settings, tiny, Train};

/// Relative tolerance of the next step's losses (other CPUs may group SIMD sums otherwise;
/// on the machine that wrote the fixtures they are equal bit for bit).
const LOSS_TOLERANCE: f32 = 1e-5;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture configurations: UNIMO pre-LN with region classes, ViLBERT post-LN (so that
/// both states of every optional block are covered).
fn config(arch: Arch) -> ModelConfig {
    let mut c = tiny(arch);
    if arch == Arch::Unimo {
        c.pre_ln = true;
        c.region_classes = 5;
    }
    c
}

fn name(arch: Arch) -> &'static str {
    arch.as_str()
}

fn read(file: String) -> Vec<u8> {
    std::fs::read(dir().join(&file)).unwrap_or_else(|e| panic!("fixture {file}: {e}"))
}

fn read_text(file: String) -> String {
    String::from_utf8(read(file)).expect("utf-8 fixture")
}

fn names_text(trainer: &Trainer<Train>) -> String {
    tensor_names(trainer.pretrain_model())
        .iter()
        .map(|n| format!("{}\t{}\t{:?}\n", n.name, n.burn_path, n.shape))
        .collect()
}

fn losses_text(report: &unimod_model::StepReport) -> String {
    report
        .losses
        .iter()
        .map(|(n, v)| format!("{n}\t{v:e}\t{:08x}\n", v.to_bits()))
        .collect()
}

#[test]
#[ignore = "writes the fixtures; run with UNIMOD_WRITE_FIXTURES=1"]
fn write() {
    let _serial = crate::common::autodiff_lock();
    if std::env::var("UNIMOD_WRITE_FIXTURES").as_deref() != Ok("1") {
        return;
    }
    std::fs::create_dir_all(dir()).expect("fixture dir");
    for arch in [Arch::Unimo, Arch::Vilbert] {
        let mut t =
            Trainer::<Train>::new(config(arch), settings(), Default::default()).expect("trainer");
        assert!(t.step(&[mixed_batch()], 1e-3).applied);
        let state = t.save().expect("save");
        let export = to_safetensors(t.pretrain_model(), &[]).expect("export");
        let n = name(arch);
        let write = |file: String, bytes: &[u8]| {
            std::fs::write(dir().join(file), bytes).expect("write fixture")
        };
        write(format!("{n}.config.json"), state.config_json.as_bytes());
        write(format!("{n}.model.mpk"), &state.model);
        write(format!("{n}.optimizer.mpk"), &state.optimizer);
        write(format!("{n}.safetensors"), &export);
        write(format!("{n}.names.tsv"), names_text(&t).as_bytes());
        let next = t.step(&[mixed_batch()], 1e-3);
        write(format!("{n}.losses.tsv"), losses_text(&next).as_bytes());
    }
}

/// The header (as JSON, so that the order of the metadata's hash map does not matter) and
/// the tensor bytes of a safetensors file.
fn parse_safetensors(bytes: &[u8]) -> (serde_json::Value, &[u8]) {
    let (len, rest) = bytes.split_at(8);
    let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
    let (header, data) = rest.split_at(len);
    (
        serde_json::from_slice(header).expect("safetensors header"),
        data,
    )
}

fn same_safetensors(a: &[u8], b: &[u8]) -> bool {
    parse_safetensors(a) == parse_safetensors(b)
}

fn old_checkpoint_loads(arch: Arch) {
    let n = name(arch);
    let state = TrainerState {
        config_json: read_text(format!("{n}.config.json")),
        model: read(format!("{n}.model.mpk")),
        optimizer: read(format!("{n}.optimizer.mpk")),
        steps_applied: 1,
    };
    assert_eq!(
        ModelConfig::from_json(&state.config_json).expect("config"),
        config(arch)
    );
    let mut trainer = Trainer::<Train>::load(&state, settings(), Default::default())
        .expect("the old checkpoint loads");
    let again = trainer.save().expect("save");
    assert!(
        again.model == state.model,
        "{n}: the model record re-saves to other bytes"
    );
    assert!(
        again.optimizer == state.optimizer,
        "{n}: the optimizer record re-saves to other bytes"
    );

    // Same exported names (and module paths, shapes), same export bytes.
    assert_eq!(
        names_text(&trainer),
        read_text(format!("{n}.names.tsv")),
        "{n}: exported names changed"
    );
    let old_export = read(format!("{n}.safetensors"));
    let export = to_safetensors(trainer.pretrain_model(), &[]).expect("export");
    assert!(
        same_safetensors(&export, &old_export),
        "{n}: the export differs from the old one"
    );

    // The old export loads strictly into a fresh model and gives back the same file.
    let (_, fresh) = model_from_state::<Train>(
        &Trainer::<Train>::new(config(arch), settings(), Default::default())
            .expect("trainer")
            .save()
            .expect("save"),
        &Default::default(),
    )
    .expect("fresh model");
    let (loaded, report) = load_safetensors(fresh, old_export.clone(), &BTreeMap::new())
        .expect("the old export loads");
    assert!(
        report.left.is_empty() && report.unused.is_empty(),
        "{report:?}"
    );
    let again = to_safetensors(&loaded, &[]).expect("export");
    assert!(
        same_safetensors(&again, &old_export),
        "{n}: the old export did not round-trip"
    );

    // The next step trains as the old code did.
    let next = trainer.step(&[mixed_batch()], 1e-3);
    let expected = read_text(format!("{n}.losses.tsv"));
    let got = losses_text(&next);
    eprintln!("{n}: losses now\n{got}expected\n{expected}");
    let parse = |s: &str| -> Vec<(String, f32)> {
        s.lines()
            .map(|l| {
                let mut f = l.split('\t');
                let name = f.next().expect("name").to_string();
                let value = f.next().expect("value").parse().expect("float");
                (name, value)
            })
            .collect()
    };
    let (got, expected) = (parse(&got), parse(&expected));
    assert_eq!(
        got.iter().map(|g| &g.0).collect::<Vec<_>>(),
        expected.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    for ((name, g), (_, e)) in got.iter().zip(&expected) {
        assert!(
            (g - e).abs() <= LOSS_TOLERANCE * e.abs().max(1.0),
            "{n} {name}: {g} now, {e} before"
        );
    }
}

#[test]
fn an_old_unimo_checkpoint_loads_exports_and_trains_as_before() {
    let _serial = crate::common::autodiff_lock();
    old_checkpoint_loads(Arch::Unimo);
}

#[test]
fn an_old_vilbert_checkpoint_loads_exports_and_trains_as_before() {
    let _serial = crate::common::autodiff_lock();
    old_checkpoint_loads(Arch::Vilbert);
}

/// Fresh weights for the fixture's seed, after the same first step, equal the old code's:
/// initialisation draws its random numbers in the same order. Ignored by default because
/// [`Trainer::new`] seeds burn's process-wide generator, which tests running in parallel
/// share: `cargo test -p unimod-model --test model compat -- --ignored --test-threads=1`.
#[test]
#[ignore = "seeds burn's global generator: run alone (--test-threads=1)"]
fn fresh_weights_and_first_step_match_the_old_code() {
    let _serial = crate::common::autodiff_lock();
    for arch in [Arch::Unimo, Arch::Vilbert] {
        let mut t =
            Trainer::<Train>::new(config(arch), settings(), Default::default()).expect("trainer");
        let r = t.step(&[mixed_batch()], 1e-3);
        assert!(r.applied, "{r:?}");
        let e = to_safetensors(t.pretrain_model(), &[]).expect("export");
        assert!(
            same_safetensors(&e, &read(format!("{}.safetensors", name(arch)))),
            "{} fresh model differs",
            name(arch)
        );
    }
}
