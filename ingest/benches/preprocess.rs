//! Preprocessing throughput on one core: image bytes to object sequences (a photo-like
//! 640x480 JPEG, with and without reduced-scale decoding, and a small PNG) and tokenisation.
//!
//! Run: `cargo bench -p unimod-ingest --bench preprocess`. The benchmark images are written
//! to `target/ingest-bench/` so that `bench/preprocess_pillow.py` measures the same files.
//! Everything runs inside a one-thread rayon pool (the JPEG decoder would otherwise use the
//! global pool), so the numbers are per core.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, RgbImage};
use unimod_ingest::config::{ImageConfig, TextConfig};
use unimod_ingest::image::{decode_rgb, image_to_objects, DecodeOptions, ObjectExtractor};
use unimod_ingest::text::TextTokenizer;

/// A deterministic photo-like image: smooth shading, a few shapes, fine texture and noise
/// (enough high-frequency content that JPEG entropy decoding costs what it does on photos).
fn photo_like(width: u32, height: u32) -> RgbImage {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    RgbImage::from_fn(width, height, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state % 25) as f32 - 12.0;
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let sky = 120.0 + 100.0 * (1.0 - fy);
        let texture = 30.0 * ((x as f32 * 0.31).sin() * (y as f32 * 0.17).cos());
        let disc = if (fx - 0.6).powi(2) + (fy - 0.55).powi(2) < 0.04 { 80.0 } else { 0.0 };
        let ground = if fy > 0.6 { 60.0 * (fx * 12.0).sin() } else { 0.0 };
        let r = sky * 0.6 + texture + disc + ground + noise;
        let g = sky * 0.8 + texture * 0.5 + ground * 0.7 + noise;
        let b = sky + texture * 0.3 - disc * 0.5 + noise;
        image::Rgb([r.clamp(0.0, 255.0) as u8, g.clamp(0.0, 255.0) as u8, b.clamp(0.0, 255.0) as u8])
    })
}

fn bench_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ingest-bench");
    std::fs::create_dir_all(&dir).expect("create target/ingest-bench");
    dir
}

fn encode_inputs() -> (Vec<u8>, Vec<u8>) {
    let mut jpeg = Vec::new();
    photo_like(640, 480)
        .write_with_encoder(JpegEncoder::new_with_quality(&mut jpeg, 90))
        .expect("encode jpeg");
    let mut png = std::io::Cursor::new(Vec::new());
    photo_like(128, 96).write_to(&mut png, ImageFormat::Png).expect("encode png");
    let png = png.into_inner();
    let dir = bench_dir();
    std::fs::write(dir.join("photo_640x480.jpg"), &jpeg).expect("write jpeg");
    std::fs::write(dir.join("small_128x96.png"), &png).expect("write png");
    eprintln!("inputs in {}: jpeg {} bytes, png {} bytes", dir.display(), jpeg.len(), png.len());
    (jpeg, png)
}

fn benches(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    let (jpeg, png) = encode_inputs();
    // The pyramid only, as bench/preprocess_pillow.py computes it; the salient boxes' cost is
    // measured on its own below.
    let config = ImageConfig { salient_boxes: 0, ..ImageConfig::default() };
    let salient = ObjectExtractor::new(&ImageConfig { salient_boxes: 6, ..ImageConfig::default() });
    let full = ImageConfig { jpeg_reduced_decode: false, ..config.clone() };
    let extractor = ObjectExtractor::new(&config);

    let mut group = c.benchmark_group("image_to_objects");
    group.throughput(Throughput::Elements(1));
    group.bench_function("jpeg_640x480_reduced_decode", |b| {
        pool.install(|| b.iter(|| image_to_objects(&jpeg, &config, &extractor).expect("decodes")))
    });
    group.bench_function("jpeg_640x480_full_decode", |b| {
        pool.install(|| b.iter(|| image_to_objects(&jpeg, &full, &extractor).expect("decodes")))
    });
    group.bench_function("png_128x96", |b| {
        pool.install(|| b.iter(|| image_to_objects(&png, &config, &extractor).expect("decodes")))
    });
    group.finish();

    // Where the JPEG time goes: decoding at 1/4 scale alone, and the 67 crops alone.
    let opts = DecodeOptions {
        max_pixels: config.max_pixels,
        max_dimension: config.max_dimension,
        min_size: Some(extractor.min_useful_size()),
    };
    let decoded = decode_rgb(&jpeg, &opts).expect("decodes");
    let mut group = c.benchmark_group("jpeg_640x480_stages");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_quarter_scale", |b| pool.install(|| b.iter(|| decode_rgb(&jpeg, &opts).expect("decodes"))));
    group.bench_function("decode_full_scale_zune_jpeg", |b| {
        pool.install(|| b.iter(|| image::load_from_memory_with_format(&jpeg, ImageFormat::Jpeg).expect("decodes")))
    });
    group.bench_function("objects_from_160x120", |b| b.iter(|| extractor.extract(&decoded.rgb)));
    group.bench_function("objects_from_160x120_with_salient_boxes", |b| b.iter(|| salient.extract(&decoded.rgb)));
    group.finish();

    let corpus: Vec<String> = (0..400)
        .map(|i| {
            format!(
                "a photo of {} {} {} the {} number {i}",
                ["a red", "two small", "the old", "three"][i % 4],
                ["car", "dogs", "house", "bicycles"][i % 4],
                ["parked near", "playing on", "standing behind", "leaning against"][i % 4],
                ["street", "beach", "tree", "wall"][i % 4]
            )
        })
        .collect();
    let tokenizer = TextTokenizer::train(&corpus, &TextConfig { vocab_size: 2000, ..TextConfig::default() }).expect("trains");
    let caption = "Two small dogs playing with a red ball on the beach near the old wooden pier at sunset.";
    let document = [caption; 8].join(" ");
    let mut group = c.benchmark_group("tokenize");
    group.throughput(Throughput::Elements(1));
    group.bench_function("caption_17_words", |b| b.iter(|| tokenizer.encode(caption).expect("encodes")));
    group.bench_function("document_136_words", |b| b.iter(|| tokenizer.encode(&document).expect("encodes")));
    group.finish();
}

criterion_group!(preprocess, benches);
criterion_main!(preprocess);
