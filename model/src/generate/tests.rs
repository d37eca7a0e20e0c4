//! Cached decoding against one teacher-forced forward pass, beam search with and without the
//! cache, and the n-gram ban.

use burn::backend::NdArray;

use super::*;
use crate::tests::common::SPECIAL;
use crate::group_tensors::GroupTensors;
use crate::plan::Group;

type B = NdArray;

const FEAT: usize = 6;

fn config(pre_ln: bool) -> ModelConfig {
    let mut c = ModelConfig::custom(Arch::Unimo, 2, 32, 2, 60, FEAT, SPECIAL).expect("config");
    c.dropout = 0.0;
    c.pre_ln = pre_ln;
    c.max_text_len = 16;
    c.max_objects = 8;
    c
}

fn settings() -> TrainSettings {
    TrainSettings { text_buckets: vec![16], object_buckets: vec![8], ..TrainSettings::default() }
}

fn image(seed: f32, rows: usize) -> VisualInput {
    let features = (0..rows * FEAT).map(|i| ((i as f32 + 1.0) * 0.61 * seed).sin()).collect();
    let locations = (0..rows)
        .map(|r| {
            let x = r as f32 / rows as f32;
            [x, 0.0, (x + 0.3).min(1.0), 1.0, 0.3]
        })
        .collect();
    VisualInput { dim: FEAT, features, locations, class_probs: None }
}

/// Logits of every text position of one row encoded in a single forward pass.
fn teacher_forced(model: &PretrainModel<B>, config: &ModelConfig, visual: Option<&VisualInput>, text: &[u32], kind: MaskKind) -> Vec<Vec<f32>> {
    let device = Default::default();
    let mut group = Group::default();
    if let Some(v) = visual {
        group.images.push(Plan::clean_images(std::slice::from_ref(v), config).pop().flatten().expect("image"));
    }
    group.texts.push(text.to_vec());
    group.kinds.push(kind);
    let input = GroupTensors::<B>::new(&group, config, &settings(), &device);
    let encoded = model.encode(&input);
    let states = encoded.text.expect("text states").narrow(0, 0, text.len());
    let unimo = model.unimo().expect("unimo");
    let logits = model.heads().token_logits(states, unimo.text.word.weight.val());
    let vocab = logits.dims()[1];
    let data: Vec<f32> = logits.into_data().convert::<f32>().to_vec().expect("f32");
    data.chunks(vocab).map(<[f32]>::to_vec).collect()
}

/// Logits of the prefix's last position, then of each fed token, through the cache.
fn cached(model: &PretrainModel<B>, config: &ModelConfig, prefix: &Prefix, fed: &[u32]) -> Vec<Vec<f32>> {
    let device = Default::default();
    let unimo = model.unimo().expect("unimo");
    let mut cache = EncoderCache::new(unimo.num_layers());
    let logits = |step: Step<B>, cache: &mut EncoderCache<B>| {
        let hidden = unimo.forward_cached(step.visual, Some(step.ids), step.text_start, step.bias, cache);
        let [rows, len, width] = hidden.dims();
        let last = hidden.narrow(1, len - 1, 1).reshape([rows, width]);
        let l = model.heads().token_logits(last, unimo.text.word.weight.val());
        l.into_data().convert::<f32>().to_vec::<f32>().expect("f32")
    };
    let mut out = vec![logits(full_step(prefix, &[Vec::new()], config, &device), &mut cache)];
    for (s, &id) in fed.iter().enumerate() {
        let l = cache.len() + 1;
        let step = Step {
            visual: None,
            ids: Tensor::from_data(TensorData::new(vec![id as i64], [1, 1]), &device),
            text_start: prefix.text.len() + s,
            bias: Tensor::zeros([1, 1, 1, l], &device),
        };
        out.push(logits(step, &mut cache));
    }
    out
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn cached_caption_logits_equal_teacher_forcing() {
    for pre_ln in [true, false] {
        let config = config(pre_ln);
        let model = PretrainModel::<B>::new(&config, &Default::default());
        let img = image(1.3, 5);
        let caption = [SPECIAL.cls, 11, 23, 7, 42, 19, SPECIAL.sep];
        let full = teacher_forced(&model, &config, Some(&img), &caption, MaskKind::ImageToText);
        let prefix = Prefix {
            visual: Plan::clean_images(std::slice::from_ref(&img), &config).pop().flatten(),
            text: vec![SPECIAL.cls],
            kind: MaskKind::ImageToText,
        };
        let steps = cached(&model, &config, &prefix, &caption[1..caption.len() - 1]);
        let d = max_diff(&full[..caption.len() - 1], &steps);
        assert!(d < 1e-4, "pre_ln {pre_ln}: max |cached - teacher forced| = {d}");
        // The check can fail: a cache that ignored the image would differ by more than the
        // tolerance above (at random initialisation post-LN damps the image's effect: ~6e-4).
        let other = Prefix { visual: Plan::clean_images(&[image(2.9, 5)], &config).pop().flatten(), ..prefix };
        let wrong = cached(&model, &config, &other, &caption[1..caption.len() - 1]);
        let w = max_diff(&full[..caption.len() - 1], &wrong);
        assert!(w > 1e-4, "pre_ln {pre_ln}: another image changed the logits by only {w}");
    }
}

#[test]
fn cached_continuation_logits_equal_teacher_forcing() {
    for pre_ln in [true, false] {
        let config = config(pre_ln);
        let model = PretrainModel::<B>::new(&config, &Default::default());
        let source = vec![SPECIAL.cls, 13, 31, 17, SPECIAL.sep];
        let target = [29, 41, 8, 53];
        let mut text = source.clone();
        text.extend_from_slice(&target);
        let full = teacher_forced(&model, &config, None, &text, MaskKind::PrefixLm { source_len: source.len() });
        let prefix = Prefix { kind: MaskKind::PrefixLm { source_len: source.len() }, text: source.clone(), visual: None };
        let steps = cached(&model, &config, &prefix, &target);
        let d = max_diff(&full[source.len() - 1..], &steps);
        assert!(d < 1e-4, "pre_ln {pre_ln}: max |cached - teacher forced| = {d}");
    }
}

#[test]
fn beam_search_is_the_same_with_and_without_the_cache() {
    let config = config(true);
    let model = PretrainModel::<B>::new(&config, &Default::default());
    let img = image(0.7, 6);
    for beam in [1, 3] {
        let opts = DecodeOptions { beam, max_len: 8, ..DecodeOptions::default() };
        let a = caption(&model, &img, &opts).expect("cached");
        let b = caption(&model, &img, &DecodeOptions { use_cache: false, ..opts.clone() }).expect("uncached");
        assert_eq!(a.ids, b.ids, "beam {beam}");
        assert!((a.log_prob - b.log_prob).abs() < 1e-3, "{} vs {}", a.log_prob, b.log_prob);
        assert!(!a.ids.is_empty() && a.ids.len() <= 8);
        assert!(a.ids.iter().all(|&id| !SPECIAL.contains(id)), "special tokens are banned: {:?}", a.ids);
        let p = continue_text(&model, &[SPECIAL.cls, 13, 31, SPECIAL.sep], &opts).expect("cached");
        let q = continue_text(&model, &[13, 31], &DecodeOptions { use_cache: false, ..opts }).expect("uncached");
        assert_eq!(p.ids, q.ids);
    }
}

#[test]
fn no_repeat_ngram_bans_the_completing_token() {
    assert_eq!(repeated_ngram_bans(&[5, 6, 7, 5], 2), vec![6]);
    assert_eq!(repeated_ngram_bans(&[5, 6, 7, 5, 6], 3), vec![7]);
    assert!(repeated_ngram_bans(&[5, 6], 3).is_empty());
    assert_eq!(repeated_ngram_bans(&[5, 6], 1), vec![5, 6]);
    assert!(repeated_ngram_bans(&[5, 6, 5], 0).is_empty());
}

#[test]
fn outputs_respect_the_length_limits() {
    let config = config(true);
    let model = PretrainModel::<B>::new(&config, &Default::default());
    // A prompt that fills the text budget still yields at most the remaining positions.
    let long: Vec<u32> = (0..40).map(|i| 10 + i % 40).collect();
    let g = continue_text(&model, &long, &DecodeOptions { max_len: 30, no_repeat_ngram: 0, min_len: 30, ..DecodeOptions::default() })
        .expect("long prompt");
    assert!(g.ids.len() <= 3, "{}", g.ids.len());
    assert!(continue_text(&model, &[SPECIAL.cls, SPECIAL.sep], &DecodeOptions::default()).is_err());
    assert!(continue_text(&model, &[999], &DecodeOptions::default()).is_err());
}

#[test]
fn vilbert_has_no_generation_head() {
    let mut config = ModelConfig::custom(Arch::Vilbert, 2, 32, 2, 60, FEAT, SPECIAL).expect("config");
    config.max_objects = 8;
    let model = PretrainModel::<B>::new(&config, &Default::default());
    let err = caption(&model, &image(1.0, 3), &DecodeOptions::default()).expect_err("vilbert");
    assert!(err.to_string().contains("ViLBERT has no generation head"), "{err}");
    assert!(continue_text(&model, &[10, 11], &DecodeOptions::default()).is_err());
}
