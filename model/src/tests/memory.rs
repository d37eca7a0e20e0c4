//! UNIMO's image window in the step (issue 8: "CMCL's retrieval embeddings come from the
//! step's own forward pass"): retrieval and encoding on the device give the loss the host
//! gave with the same positives, the window is filled by the steps themselves, and a step
//! still reads from the device once.

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::config::Objective;
use crate::layout::Layout;
use crate::memory::{ImageMemory, ImageMemorySettings, MemoryTensors};
use crate::model::PretrainModel;
use crate::plan::{ImageRows, Plan};
use crate::positives::image_key;
use crate::{readback, Arch, Example, TrainSettings, Trainer, VisualInput};

use super::common::{image, image_example, pair_example, settings, text, tiny, Eval, Train};

fn pair(seed: u32, extra: Option<VisualInput>) -> Example {
    Example { text: Some(text(seed, 8)), image: Some(image(seed)), extra_images: extra.into_iter().collect(), ..Example::default() }
}

fn rows_of(i: &VisualInput) -> ImageRows {
    ImageRows { features: i.features.clone(), locations: i.locations.clone() }
}

fn cmcl_loss(model: &PretrainModel<Eval>, batch: &[Example], memory: Option<&MemoryTensors<Eval>>) -> (f32, Option<Vec<f32>>) {
    let config = model.config().clone();
    let plan = Plan::build(batch, &config, &mut StdRng::seed_from_u64(3));
    let layout = Layout::tight(&plan, &config, &settings());
    let (losses, window) = model.step_outputs(&plan, &layout, &Default::default(), memory, false);
    let cmcl = losses.iter().find(|l| l.objective == Objective::Cmcl).expect("a CMCL loss");
    let sims = window.similarities.map(|s| s.into_data().to_vec().expect("f32"));
    (cmcl.loss.clone().into_scalar(), sims)
}

/// A window holding `images`, kept with the model's embeddings of `embedded_as` (row by row).
fn window_of(model: &PretrainModel<Eval>, images: &[VisualInput], embedded_as: &[VisualInput], min_similarity: f32) -> ImageMemory<Eval> {
    let config = model.config();
    let settings = ImageMemorySettings { capacity: 4, positives: 1, min_similarity };
    let mut memory = ImageMemory::new(settings, config.pooled_dim(), config.feature_dim, config.max_objects);
    let (plan, _) = Plan::for_images(embedded_as, config);
    let embeddings = model.pooled_images(&plan, &TrainSettings::default(), &Default::default());
    let kept: Vec<(u64, ImageRows)> = images.iter().map(|i| (image_key(&i.features), rows_of(i))).collect();
    memory.insert(&kept, embeddings);
    memory
}

fn view(memory: &ImageMemory<Eval>) -> MemoryTensors<Eval> {
    memory.tensors(&settings().object_buckets, |t| t, |t| t, &Default::default()).expect("a filled window")
}

#[test]
fn retrieval_on_the_device_equals_the_same_positives_given_on_the_host() {
    <Eval as burn::tensor::backend::Backend>::seed(&Default::default(), 5);
    let model = PretrainModel::<Eval>::new(&tiny(Arch::Unimo), &Default::default());
    let (c, d) = (image(7), image(8));
    // On the host: each pair carries its retrieved image as an encoded extra positive.
    let (host, _) = cmcl_loss(&model, &[pair(1, Some(c.clone())), pair(2, Some(d.clone()))], None);
    // On the device: C and D kept with the embeddings of the pairs' own images, so pair 1
    // retrieves C and pair 2 retrieves D (cosine 1): what the host was given.
    let memory = window_of(&model, &[d.clone(), c.clone()], &[image(2), image(1)], -1.0);
    let (device, sims) = cmcl_loss(&model, &[pair(1, None), pair(2, None)], Some(&view(&memory)));
    let sims = sims.expect("retrieval ran");
    let (plain, _) = cmcl_loss(&model, &[pair(1, None), pair(2, None)], None);
    eprintln!("host {host}, device {device}, without retrieval {plain}, similarities {sims:?}");
    assert!(sims.iter().take(2).all(|s| (s - 1.0).abs() < 1e-4), "{sims:?}");
    assert!((host - device).abs() < 1e-5, "host {host} vs device {device}");
    // Without retrieval the loss is another one (the test can tell them apart).
    assert!((plain - device).abs() > 1e-4, "plain {plain} vs device {device}");
}

#[test]
fn retrieved_positives_are_encoded_from_their_features_not_kept_as_constants() {
    <Eval as burn::tensor::backend::Backend>::seed(&Default::default(), 5);
    let model = PretrainModel::<Eval>::new(&tiny(Arch::Unimo), &Default::default());
    let memory = window_of(&model, &[image(7), image(8)], &[image(1), image(2)], -1.0);
    let batch = [pair(1, None), pair(2, None)];
    let (before, _) = cmcl_loss(&model, &batch, Some(&view(&memory)));
    // The same kept embeddings (so the same retrieval) over other features: another loss.
    let mut changed = view(&memory);
    changed.features = changed.features.mul_scalar(0.5);
    let (after, _) = cmcl_loss(&model, &batch, Some(&changed));
    assert!((before - after).abs() > 1e-4, "{before} vs {after}");
    // Above-threshold only: with nothing close enough, the loss is the plain one.
    let far = window_of(&model, &[image(7), image(8)], &[image(1), image(2)], 1.5);
    let (none, sims) = cmcl_loss(&model, &batch, Some(&view(&far)));
    let (plain, _) = cmcl_loss(&model, &batch, None);
    assert!((none - plain).abs() < 1e-5, "{none} vs {plain}");
    assert!(sims.expect("retrieval ran").iter().all(|&s| s == -2.0));
}

#[test]
fn the_trainer_fills_its_window_from_its_own_steps_and_reads_once() {
    let memory = ImageMemorySettings { capacity: 6, positives: 1, min_similarity: -1.0 };
    let mut trainer =
        Trainer::<Train>::new(tiny(Arch::Unimo), TrainSettings { image_memory: memory, ..settings() }, Default::default()).expect("trainer");
    let reads = readback::reads_on_this_thread();
    // Pairs without extra images of their own, and image-only records.
    let strip = |mut e: Example| {
        e.extra_images.clear();
        e
    };
    let first: Vec<Example> = (0..3).map(|s| image_example(10 + s)).chain((0..2).map(|s| strip(pair_example(s)))).collect();
    let r = trainer.step(&[first], 1e-3);
    assert!(r.applied && r.image_positives.is_empty(), "an empty window retrieves nothing: {r:?}");
    assert_eq!(trainer.image_window_len(), 3, "the step's image-only records are kept");
    let second: Vec<Example> = (0..4).map(|s| image_example(20 + s)).chain((0..3).map(|s| strip(pair_example(s)))).collect();
    let r = trainer.step(std::slice::from_ref(&second), 1e-3);
    assert!(r.applied, "{r:?}");
    assert_eq!(r.image_positives.len(), 3, "one positive per pair (threshold -1): {r:?}");
    assert!(r.image_positives.iter().all(|s| (-1.0..=1.0001).contains(s)), "{r:?}");
    assert_eq!(trainer.image_window_len(), 6, "the ring holds its capacity");
    assert_eq!(readback::reads_on_this_thread() - reads, 2, "one read per step, retrieval included");
    // A non-finite step keeps nothing and reports no positives.
    let mut bad = image_example(40);
    if let Some(i) = bad.image.as_mut() {
        i.features.iter_mut().for_each(|x| *x = f32::NAN);
    }
    let mut poisoned = second;
    poisoned.push(bad);
    let r = trainer.step(&[poisoned], 1e-3);
    assert!(r.nonfinite && r.image_positives.is_empty(), "{r:?}");
}

#[test]
fn vilbert_and_a_disabled_window_keep_nothing_and_two_micro_batches_read_once() {
    let on = TrainSettings { image_memory: ImageMemorySettings { capacity: 8, positives: 1, min_similarity: -1.0 }, ..settings() };
    let pairs = |seeds: std::ops::Range<u32>| seeds.map(|s| pair(s, None)).collect::<Vec<_>>();
    for (arch, settings) in [(Arch::Vilbert, on.clone()), (Arch::Unimo, settings())] {
        let mut t = Trainer::<Train>::new(tiny(arch), settings, Default::default()).expect("trainer");
        t.step(&[(0..3).map(image_example).collect()], 1e-3);
        let r = t.step(&[pairs(10..14)], 1e-3);
        assert_eq!(t.image_window_len(), 0, "{arch:?}");
        assert!(r.image_positives.is_empty());
    }
    let mut t = Trainer::<Train>::new(tiny(Arch::Unimo), on, Default::default()).expect("trainer");
    t.step(&[(0..3).map(image_example).collect()], 1e-3);
    let before = readback::reads_on_this_thread();
    let r = t.step(&[pairs(20..22), pairs(22..25)], 1e-3);
    assert_eq!(readback::reads_on_this_thread() - before, 1);
    assert_eq!(r.image_positives.len(), 5, "both micro-batches retrieve: {r:?}");
}
