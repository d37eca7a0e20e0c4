//! The object sequences of a few PNG files, as `python/tests/data/objects_golden.json` holds
//! them for the PyTorch twin's port of the region extractor (`python/unimod_torch/objects.py`,
//! checked by `python/tests/test_objects.py`). This test fails when the Rust extractor and the
//! golden file disagree; `UNIMOD_WRITE_GOLDEN=1 cargo test -p unimod-ingest --test
//! objects_golden` rewrites the file after a deliberate change (then port the change).

use std::io::Cursor;
use std::path::PathBuf;

use base64::Engine as _;
use image::{DynamicImage, GrayImage, ImageFormat, RgbImage, RgbaImage};
use serde_json::{json, Value};
use unimod_ingest::config::ImageConfig;
use unimod_ingest::image::{image_to_objects, ObjectExtractor};

fn png(img: DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).expect("encode png");
    out.into_inner()
}

/// A deterministic busy pattern (every PNG filter type gets used).
fn value(x: u32, y: u32, c: u32) -> u8 {
    ((x * 37 + y * 91 + c * 53 + (x * y) % 17 * 11) % 256) as u8
}

/// Shapes on a grey background, as the synthetic stream draws them: a disc, a square, an
/// upward triangle and a touching square of another colour (salient objects to find).
fn shapes(side: u32) -> RgbImage {
    let s = side as f32;
    RgbImage::from_fn(side, side, |x, y| {
        let (fx, fy) = ((x as f32 + 0.5) / s, (y as f32 + 0.5) / s);
        let (dx, dy) = (fx - 0.2, fy - 0.25);
        if dx * dx + dy * dy <= 0.12 * 0.12 {
            return image::Rgb([220, 30, 30]);
        }
        if (fx - 0.7).abs() <= 0.1 && (fy - 0.3).abs() <= 0.1 {
            return image::Rgb([30, 60, 220]);
        }
        if (0.8..=0.9).contains(&fx) && (fy - 0.3).abs() <= 0.1 {
            return image::Rgb([240, 230, 40]);
        }
        let dy = fy - 0.75;
        if (-0.15..=0.15).contains(&dy) && (fx - 0.4).abs() <= 0.15 * (dy + 0.15) / 0.3 {
            return image::Rgb([30, 180, 40]);
        }
        image::Rgb([128, 128, 128])
    })
}

/// (name, PNG, box scales, crop size, salient boxes).
fn cases() -> Vec<(&'static str, Vec<u8>, Vec<u32>, u32, usize)> {
    let rgb = |w, h| DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| image::Rgb([value(x, y, 0), value(x, y, 1), value(x, y, 2)])));
    vec![
        ("rgb-37x23", png(rgb(37, 23)), vec![1, 2, 3], 4, 0),
        // Large enough to be box-reduced first (factor 12).
        ("rgb-200x150-reduced", png(rgb(200, 150)), vec![1, 2, 3], 4, 0),
        ("grey-20x30", png(DynamicImage::ImageLuma8(GrayImage::from_fn(20, 30, |x, y| image::Luma([value(x, y, 1)])))), vec![1, 2], 3, 0),
        (
            "rgba-16x16",
            png(DynamicImage::ImageRgba8(RgbaImage::from_fn(16, 16, |x, y| {
                image::Rgba([value(x, y, 0), value(x, y, 1), value(x, y, 2), value(x, y, 3)])
            }))),
            vec![2],
            2,
            0,
        ),
        ("rgb-5x3-upsampled", png(rgb(5, 3)), vec![1, 2], 4, 0),
        // Salient boxes: many small objects and ties on a busy pattern, then drawn shapes.
        ("rgb-37x23-salient", png(rgb(37, 23)), vec![1, 2], 4, 6),
        ("shapes-64-salient", png(DynamicImage::ImageRgb8(shapes(64))), vec![1, 2, 3, 4], 8, 6),
        ("shapes-300-reduced-salient", png(DynamicImage::ImageRgb8(shapes(300))), vec![1, 2, 3], 8, 3),
    ]
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../python/tests/data/objects_golden.json")
}

fn compute() -> Value {
    let mut out = Vec::new();
    for (name, bytes, scales, crop, salient) in cases() {
        let config = ImageConfig { box_scales: scales.clone(), crop_size: crop, salient_boxes: salient, ..ImageConfig::default() };
        let extractor = ObjectExtractor::new(&config);
        let seq = image_to_objects(&bytes, &config, &extractor).expect("extracts");
        out.push(json!({
            "name": name,
            "png_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
            "box_scales": scales,
            "crop_size": crop,
            "salient_boxes": salient,
            "dim": seq.dim,
            "features": seq.features,
            "locations": seq.locations,
        }));
    }
    json!({ "cases": out })
}

#[test]
fn golden_object_sequences_match_the_extractor() {
    let now = compute();
    let path = golden_path();
    if std::env::var_os("UNIMOD_WRITE_GOLDEN").is_some() {
        std::fs::write(&path, serde_json::to_string(&now).expect("json") + "\n").expect("write golden");
        return;
    }
    let text = std::fs::read_to_string(&path).expect("python/tests/data/objects_golden.json exists");
    let golden: Value = serde_json::from_str(&text).expect("golden is JSON");
    // Compare as f32 values (the JSON text of a float may differ between writers).
    let as_f32 = |v: &Value| -> Vec<f32> {
        let mut out = Vec::new();
        fn walk(v: &Value, out: &mut Vec<f32>) {
            match v {
                Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                Value::Number(n) => out.push(n.as_f64().expect("number") as f32),
                _ => {}
            }
        }
        walk(v, &mut out);
        out
    };
    let (a, b) = (now["cases"].as_array().expect("cases"), golden["cases"].as_array().expect("cases"));
    assert_eq!(a.len(), b.len(), "number of golden cases");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["name"], y["name"]);
        assert_eq!(x["png_base64"], y["png_base64"], "{}: the PNG encoder changed; rewrite the golden file", x["name"]);
        for key in ["features", "locations"] {
            assert_eq!(as_f32(&x[key]), as_f32(&y[key]), "{} {key}: the extractor changed; rewrite the golden file and port the change", x["name"]);
        }
    }
}
