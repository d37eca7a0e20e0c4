//! Precomputed detector regions sent by producers (docs/interface.md section 3):
//! `"regions": {"image_w": W, "image_h": H, "boxes": [[x1, y1, x2, y2], ...], "dim": D,
//! "features_base64": "<little-endian f32, boxes x D>"}`, optionally with
//! `"classes": C, "class_probs_base64": "<little-endian f32, boxes x C>"` (detector class
//! distributions for the KL term of masked region modelling).
//!
//! Everything is validated before it becomes an [`ObjectSequence`]: dimensions, box
//! coordinates inside the image, feature length = boxes x dim, finite values within
//! `image.max_abs_feature`; the global row's mean is computed in f64 and the finished
//! sequence is checked finite, so hostile numbers never reach the optimizer.

use serde_json::{Map, Value};

use crate::record::{ClassProbs, ObjectSequence};
use crate::reject::{RejectReason, Rejection};

use super::message::decode_base64;

/// Largest accepted region feature width (a detector's 2048-d features fit comfortably).
pub const MAX_REGION_DIM: usize = 8192;
/// Largest accepted number of detector classes.
pub const MAX_CLASSES: usize = 4096;

/// Limits applied to precomputed regions.
#[derive(Debug, Clone, Copy)]
pub struct RegionLimits {
    /// Largest number of boxes.
    pub max_objects: usize,
    /// Largest `image_w` / `image_h`.
    pub max_dimension: u32,
    /// Largest accepted `|value|` of a region feature (`image.max_abs_feature`).
    pub max_abs_feature: f32,
}

fn invalid(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::InvalidRegions, detail)
}

fn positive_int(map: &Map<String, Value>, key: &str, max: u64) -> Result<u64, Rejection> {
    let value = map.get(key).ok_or_else(|| invalid(format!("regions.{key} is missing")))?;
    let n = value
        .as_u64()
        .ok_or_else(|| invalid(format!("regions.{key} must be a positive integer, got {value}")))?;
    if n == 0 || n > max {
        return Err(invalid(format!("regions.{key} = {n} is outside 1..={max}")));
    }
    Ok(n)
}

fn f32_rows(map: &Map<String, Value>, key: &str, rows: usize, width: usize, max_abs: f32) -> Result<Vec<f32>, Rejection> {
    let text = map
        .get(key)
        .ok_or_else(|| invalid(format!("regions.{key} is missing")))?
        .as_str()
        .ok_or_else(|| invalid(format!("regions.{key} must be a base64 string")))?;
    let bytes = decode_base64(text).map_err(|e| invalid(format!("regions.{key}: {e}")))?;
    let expected = rows * width * 4;
    if bytes.len() != expected {
        return Err(invalid(format!(
            "regions.{key} has {} bytes, expected {rows} x {width} x 4 = {expected}",
            bytes.len()
        )));
    }
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!("regions.{key} value {i} is not finite")));
    }
    if let Some(i) = values.iter().position(|v| v.abs() > max_abs) {
        return Err(invalid(format!(
            "regions.{key} value {i} = {:e} is larger in magnitude than image.max_abs_feature = {max_abs:e}",
            values[i]
        )));
    }
    Ok(values)
}

/// Validates a `regions` object and turns it into an object sequence: row 0 is the global
/// `[IMG]` entry (mean feature, location `[0, 0, 1, 1, 1]`), rows 1.. the boxes in order.
pub fn parse_regions(value: &Value, limits: RegionLimits) -> Result<ObjectSequence, Rejection> {
    let map = value.as_object().ok_or_else(|| invalid("regions must be an object"))?;
    let max_dim = u64::from(limits.max_dimension);
    let image_w = positive_int(map, "image_w", max_dim)? as f32;
    let image_h = positive_int(map, "image_h", max_dim)? as f32;
    let dim = positive_int(map, "dim", MAX_REGION_DIM as u64)? as usize;
    let boxes = map
        .get("boxes")
        .ok_or_else(|| invalid("regions.boxes is missing"))?
        .as_array()
        .ok_or_else(|| invalid("regions.boxes must be an array"))?;
    if boxes.is_empty() {
        return Err(invalid("regions.boxes is empty"));
    }
    if boxes.len() > limits.max_objects {
        return Err(invalid(format!(
            "{} boxes, more than image.max_objects = {}",
            boxes.len(),
            limits.max_objects
        )));
    }
    let area = image_w * image_h;
    let mut locations = Vec::with_capacity(boxes.len() + 1);
    locations.push([0.0, 0.0, 1.0, 1.0, 1.0]);
    for (i, b) in boxes.iter().enumerate() {
        let coords = b
            .as_array()
            .filter(|a| a.len() == 4)
            .ok_or_else(|| invalid(format!("regions.boxes[{i}] must be [x1, y1, x2, y2]")))?;
        let mut c = [0f32; 4];
        for (slot, v) in c.iter_mut().zip(coords) {
            *slot = v
                .as_f64()
                .map(|x| x as f32)
                .filter(|x| x.is_finite())
                .ok_or_else(|| invalid(format!("regions.boxes[{i}] has a non-finite or non-numeric coordinate")))?;
        }
        let [x1, y1, x2, y2] = c;
        if !(0.0 <= x1 && x1 < x2 && x2 <= image_w && 0.0 <= y1 && y1 < y2 && y2 <= image_h) {
            return Err(invalid(format!(
                "regions.boxes[{i}] = [{x1}, {y1}, {x2}, {y2}] is empty or outside the {image_w}x{image_h} image"
            )));
        }
        locations.push([x1 / image_w, y1 / image_h, x2 / image_w, y2 / image_h, (x2 - x1) * (y2 - y1) / area]);
    }
    let n = boxes.len();
    let region_features = f32_rows(map, "features_base64", n, dim, limits.max_abs_feature)?;
    let features = with_mean_row(&region_features, n, dim);

    let class_probs = match map.get("classes") {
        None => None,
        Some(_) => {
            let classes = positive_int(map, "classes", MAX_CLASSES as u64)? as usize;
            let probs = f32_rows(map, "class_probs_base64", n, classes, 1.0 + 1e-3)?;
            for (i, row) in probs.chunks_exact(classes).enumerate() {
                let sum: f32 = row.iter().sum();
                if row.iter().any(|&p| p < 0.0) || (sum - 1.0).abs() > 1e-3 {
                    return Err(invalid(format!(
                        "regions.class_probs_base64 row {i} is not a distribution (sum {sum})"
                    )));
                }
            }
            Some(ClassProbs { classes, probs: with_mean_row(&probs, n, classes) })
        }
    };
    let seq = ObjectSequence { dim, features, locations, class_probs };
    let finite = seq.features.iter().all(|v| v.is_finite())
        && seq.locations.iter().flatten().all(|v| v.is_finite())
        && seq.class_probs.as_ref().is_none_or(|c| c.probs.iter().all(|v| v.is_finite()));
    if !finite {
        return Err(invalid("the object sequence built from the regions is not finite"));
    }
    Ok(seq)
}

/// Prepends the mean of `rows x width` values as a new first row (summed in f64, so large
/// values cannot overflow the sum).
pub(crate) fn with_mean_row(rows_data: &[f32], rows: usize, width: usize) -> Vec<f32> {
    let mut sums = vec![0f64; width];
    for row in rows_data.chunks_exact(width) {
        for (acc, v) in sums.iter_mut().zip(row) {
            *acc += f64::from(*v);
        }
    }
    let n = rows.max(1) as f64;
    let mut out: Vec<f32> = Vec::with_capacity(width + rows_data.len());
    out.extend(sums.iter().map(|s| (s / n) as f32));
    out.extend_from_slice(rows_data);
    out
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::json;

    use super::*;

    const LIMITS: RegionLimits = RegionLimits { max_objects: 10, max_dimension: 1000, max_abs_feature: 1e4 };

    fn b64(values: &[f32]) -> String {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn good() -> Value {
        json!({"image_w": 100, "image_h": 50, "dim": 2,
               "boxes": [[0, 0, 50, 50], [50, 10, 100, 20]],
               "features_base64": b64(&[1.0, 2.0, 3.0, 6.0])})
    }

    #[test]
    fn good_regions_become_a_sequence_with_a_global_row() {
        let seq = parse_regions(&good(), LIMITS).expect("valid");
        assert_eq!(seq.dim, 2);
        assert_eq!(seq.len(), 3);
        assert_eq!(seq.features, vec![2.0, 4.0, 1.0, 2.0, 3.0, 6.0]);
        assert_eq!(seq.locations[0], [0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(seq.locations[1], [0.0, 0.0, 0.5, 1.0, 0.5]);
        assert_eq!(seq.locations[2], [0.5, 0.2, 1.0, 0.4, 0.1]);
        assert!(seq.class_probs.is_none());
    }

    #[test]
    fn class_probs_are_parsed_and_checked() {
        let mut v = good();
        v["classes"] = json!(2);
        v["class_probs_base64"] = json!(b64(&[0.5, 0.5, 1.0, 0.0]));
        let seq = parse_regions(&v, LIMITS).expect("valid");
        let probs = seq.class_probs.expect("present");
        assert_eq!(probs.classes, 2);
        assert_eq!(probs.probs, vec![0.75, 0.25, 0.5, 0.5, 1.0, 0.0]);
        v["class_probs_base64"] = json!(b64(&[0.5, 0.9, 1.0, 0.0]));
        assert!(parse_regions(&v, LIMITS).is_err());
    }

    #[test]
    fn bad_regions_are_rejected() {
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("box outside", Box::new(|v| v["boxes"][1] = json!([50, 10, 101, 20]))),
            ("negative", Box::new(|v| v["boxes"][0] = json!([-1, 0, 5, 5]))),
            ("empty box", Box::new(|v| v["boxes"][0] = json!([5, 0, 5, 5]))),
            ("three coords", Box::new(|v| v["boxes"][0] = json!([0, 0, 5]))),
            ("string coord", Box::new(|v| v["boxes"][0] = json!([0, 0, "5", 5]))),
            ("zero width", Box::new(|v| v["image_w"] = json!(0))),
            ("huge height", Box::new(|v| v["image_h"] = json!(5000))),
            ("float dim", Box::new(|v| v["dim"] = json!(2.5))),
            ("short features", Box::new(|v| v["features_base64"] = json!(b64(&[1.0, 2.0, 3.0])))),
            ("nan feature", Box::new(|v| v["features_base64"] = json!(b64(&[1.0, f32::NAN, 3.0, 4.0])))),
            ("inf feature", Box::new(|v| v["features_base64"] = json!(b64(&[1.0, f32::INFINITY, 3.0, 4.0])))),
            ("huge feature", Box::new(|v| v["features_base64"] = json!(b64(&[3e38, 3e38, 3.0, 4.0])))),
            ("above the bound", Box::new(|v| v["features_base64"] = json!(b64(&[1.0, -10_001.0, 3.0, 4.0])))),
            ("bad base64", Box::new(|v| v["features_base64"] = json!("@@@"))),
            ("no boxes", Box::new(|v| v["boxes"] = json!([]))),
            ("missing dim", Box::new(|v| {
                v.as_object_mut().expect("object").remove("dim");
            })),
            ("too many", Box::new(|v| v["boxes"] = json!(vec![[0, 0, 1, 1]; 11]))),
        ];
        for (name, mutate) in cases {
            let mut v = good();
            mutate(&mut v);
            let err = parse_regions(&v, LIMITS).expect_err(name);
            assert_eq!(err.reason, RejectReason::InvalidRegions, "{name}: {err}");
        }
        assert!(parse_regions(&json!([1, 2]), LIMITS).is_err());
    }

    #[test]
    fn values_at_the_bound_pass_and_the_mean_is_exact() {
        let mut v = good();
        v["features_base64"] = json!(b64(&[1e4, -1e4, 1e4, 1e4]));
        let seq = parse_regions(&v, LIMITS).expect("at the bound");
        assert_eq!(&seq.features[..2], &[1e4, 0.0]);
        // The f64 mean of values whose f32 sum overflows.
        let big = RegionLimits { max_abs_feature: f32::MAX, ..LIMITS };
        v["features_base64"] = json!(b64(&[3e38, 1.0, 3e38, 1.0]));
        let seq = parse_regions(&v, big).expect("finite mean");
        assert_eq!(seq.features[0], 3e38);
        assert!(seq.features.iter().all(|x| x.is_finite()));
    }
}
