//! The producers' message schema (docs/interface.md section 3): one JSON object per record, or raw
//! image bytes on the image topic. Decoding here is cheap and synchronous; it checks the
//! schema and extracts the parts (text, image source, precomputed regions) without fetching
//! or decoding any image.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::{Map, Value};
use url::Url;

use crate::record::{ObjectSequence, RecordKind};
use crate::reject::{RejectReason, Rejection};

use super::regions::{parse_regions, RegionLimits};

/// Standard base64, padding optional.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Schema version this decoder understands (`"v": 1`; absent means 1).
pub const SCHEMA_VERSION: u64 = 1;

/// Limits applied while decoding a message.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted image in bytes (`fetch.max_image_bytes`), for inline images.
    pub max_image_bytes: u64,
    /// Limits on precomputed regions.
    pub regions: RegionLimits,
}

/// Where the image of a record comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// To be downloaded (`image_url`, http or https).
    Url(Url),
    /// Inline bytes (`image_base64`).
    Bytes(Vec<u8>),
    /// The record value itself is the image (raw image bytes on the image topic); not copied.
    Payload,
}

/// A decoded message: the parts a record carries, validated against the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The producer's `id`, if any (logs only).
    pub id: Option<String>,
    /// Whitespace-normalised `text` (text records) or `caption` (pairs).
    pub text: Option<String>,
    /// The image source (image and pair records).
    pub image: Option<ImageSource>,
    /// Precomputed detector regions, already validated, used instead of the built-in
    /// extractor (the image is then not fetched or decoded).
    pub regions: Option<ObjectSequence>,
}

/// Collapses runs of whitespace to single spaces and trims the ends.
pub fn normalize_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Decodes standard base64 (padding optional; a `data:...;base64,` prefix is allowed).
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let body = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or(rest, |(_, b)| b),
        None => text,
    };
    BASE64.decode(body.trim())
}

/// True when the bytes start like an image in a supported format (not JSON).
fn looks_like_image(bytes: &[u8]) -> bool {
    ::image::guess_format(bytes).is_ok()
}

/// Decodes one record value of the given kind.
pub fn decode_message(kind: RecordKind, payload: Option<&[u8]>, limits: &DecodeLimits) -> Result<Message, Rejection> {
    let payload = match payload {
        Some(p) if !p.is_empty() => p,
        _ => return Err(Rejection::new(RejectReason::EmptyPayload, "record has no value")),
    };
    if kind == RecordKind::Image && looks_like_image(payload) {
        check_size(payload.len(), limits)?;
        return Ok(Message { id: None, text: None, image: Some(ImageSource::Payload), regions: None });
    }
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        let what = if kind == RecordKind::Image { "neither an image nor JSON" } else { "not JSON" };
        Rejection::new(RejectReason::NotJson, format!("value is {what}: {e}"))
    })?;
    let map = value
        .as_object()
        .ok_or_else(|| Rejection::new(RejectReason::BadSchema, "value is JSON but not an object"))?;
    check_version(map)?;
    let id = parse_id(map)?;
    let mut message = Message { id, text: None, image: None, regions: None };
    match kind {
        RecordKind::Text => {
            message.text = Some(required_text(map, "text")?);
        }
        RecordKind::Image => {
            message.image = Some(image_source(map, limits)?);
            message.regions = optional_regions(map, limits)?;
        }
        RecordKind::Pair => {
            message.text = Some(required_text(map, "caption")?);
            message.image = Some(image_source(map, limits)?);
            message.regions = optional_regions(map, limits)?;
        }
    }
    Ok(message)
}

fn check_size(len: usize, limits: &DecodeLimits) -> Result<(), Rejection> {
    if len as u64 > limits.max_image_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!("inline image has {len} bytes, more than fetch.max_image_bytes = {}", limits.max_image_bytes),
        ));
    }
    Ok(())
}

fn check_version(map: &Map<String, Value>) -> Result<(), Rejection> {
    match map.get("v") {
        None => Ok(()),
        Some(v) if v.as_u64() == Some(SCHEMA_VERSION) => Ok(()),
        Some(v) => Err(Rejection::new(RejectReason::BadSchema, format!("unsupported schema version v = {v}"))),
    }
}

fn parse_id(map: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    match map.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(Rejection::new(
            RejectReason::InvalidField,
            format!("id must be a string or a number, got {}", type_name(other)),
        )),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn required_text(map: &Map<String, Value>, key: &str) -> Result<String, Rejection> {
    let text = match map.get(key) {
        None | Some(Value::Null) => {
            return Err(Rejection::new(RejectReason::MissingField, format!("field `{key}` is missing")));
        }
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!("field `{key}` must be a string, got {}", type_name(other)),
            ));
        }
    };
    let normalized = normalize_text(text);
    if normalized.is_empty() {
        return Err(Rejection::new(RejectReason::EmptyText, format!("field `{key}` is empty")));
    }
    Ok(normalized)
}

fn image_source(map: &Map<String, Value>, limits: &DecodeLimits) -> Result<ImageSource, Rejection> {
    let url = map.get("image_url").filter(|v| !v.is_null());
    let b64 = map.get("image_base64").filter(|v| !v.is_null());
    match (url, b64) {
        (None, None) => Err(Rejection::new(
            RejectReason::MissingField,
            "neither `image_url` nor `image_base64` is present",
        )),
        (Some(_), Some(_)) => Err(Rejection::new(
            RejectReason::InvalidField,
            "both `image_url` and `image_base64` are present; send one",
        )),
        (Some(url), None) => {
            let text = url.as_str().ok_or_else(|| {
                Rejection::new(RejectReason::InvalidField, format!("image_url must be a string, got {}", type_name(url)))
            })?;
            Ok(ImageSource::Url(parse_image_url(text)?))
        }
        (None, Some(b64)) => {
            let text = b64.as_str().ok_or_else(|| {
                Rejection::new(RejectReason::InvalidField, format!("image_base64 must be a string, got {}", type_name(b64)))
            })?;
            // Base64 is 4/3 the size: refuse oversized inline images before decoding them.
            if (text.len() as u64 / 4).saturating_mul(3) > limits.max_image_bytes.saturating_add(3) {
                return Err(Rejection::new(
                    RejectReason::TooLarge,
                    format!("image_base64 decodes to more than fetch.max_image_bytes = {}", limits.max_image_bytes),
                ));
            }
            let bytes = decode_base64(text)
                .map_err(|e| Rejection::new(RejectReason::InvalidField, format!("image_base64 is not base64: {e}")))?;
            if bytes.is_empty() {
                return Err(Rejection::new(RejectReason::InvalidField, "image_base64 is empty"));
            }
            check_size(bytes.len(), limits)?;
            Ok(ImageSource::Bytes(bytes))
        }
    }
}

/// Parses an image URL: absolute, http or https, with a host.
pub fn parse_image_url(text: &str) -> Result<Url, Rejection> {
    let url = Url::parse(text.trim())
        .map_err(|e| Rejection::new(RejectReason::BadUrl, format!("image_url does not parse: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Rejection::new(
            RejectReason::BadUrl,
            format!("image_url scheme `{}` is not http or https", url.scheme()),
        ));
    }
    if url.host().is_none() {
        return Err(Rejection::new(RejectReason::BadUrl, "image_url has no host"));
    }
    Ok(url)
}

fn optional_regions(map: &Map<String, Value>, limits: &DecodeLimits) -> Result<Option<ObjectSequence>, Rejection> {
    match map.get("regions") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => parse_regions(value, limits.regions).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::json;

    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_image_bytes: 1000,
        regions: RegionLimits { max_objects: 10, max_dimension: 1000, max_abs_feature: 1e4 },
    };

    fn decode(kind: RecordKind, value: &Value) -> Result<Message, Rejection> {
        decode_message(kind, Some(value.to_string().as_bytes()), &LIMITS)
    }

    fn reason(result: Result<Message, Rejection>) -> RejectReason {
        result.expect_err("must be rejected").reason
    }

    fn tiny_png() -> Vec<u8> {
        let img = ::image::RgbImage::from_pixel(2, 2, ::image::Rgb([1, 2, 3]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, ::image::ImageFormat::Png).expect("encode png");
        out.into_inner()
    }

    #[test]
    fn text_messages() {
        let m = decode(RecordKind::Text, &json!({"id": "doc-1", "text": "  hello \n world ", "extra": 1})).expect("ok");
        assert_eq!(m.id.as_deref(), Some("doc-1"));
        assert_eq!(m.text.as_deref(), Some("hello world"));
        assert!(m.image.is_none());
        let m = decode(RecordKind::Text, &json!({"v": 1, "id": 7, "text": "x"})).expect("ok");
        assert_eq!(m.id.as_deref(), Some("7"));
        assert_eq!(reason(decode(RecordKind::Text, &json!({"id": "a"}))), RejectReason::MissingField);
        assert_eq!(reason(decode(RecordKind::Text, &json!({"text": " \t "}))), RejectReason::EmptyText);
        assert_eq!(reason(decode(RecordKind::Text, &json!({"text": 5}))), RejectReason::InvalidField);
        assert_eq!(reason(decode(RecordKind::Text, &json!({"text": "a", "id": [1]}))), RejectReason::InvalidField);
        assert_eq!(reason(decode(RecordKind::Text, &json!({"v": 2, "text": "a"}))), RejectReason::BadSchema);
        assert_eq!(reason(decode(RecordKind::Text, &json!(["text"]))), RejectReason::BadSchema);
        assert_eq!(reason(decode_message(RecordKind::Text, Some(b"hello"), &LIMITS)), RejectReason::NotJson);
        assert_eq!(reason(decode_message(RecordKind::Text, Some(b"\xff\xfe"), &LIMITS)), RejectReason::NotJson);
        assert_eq!(reason(decode_message(RecordKind::Text, None, &LIMITS)), RejectReason::EmptyPayload);
        assert_eq!(reason(decode_message(RecordKind::Text, Some(b""), &LIMITS)), RejectReason::EmptyPayload);
    }

    #[test]
    fn image_messages() {
        let png = tiny_png();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let m = decode(RecordKind::Image, &json!({"id": "img-1", "image_base64": b64})).expect("ok");
        assert_eq!(m.image, Some(ImageSource::Bytes(png.clone())));
        let unpadded = b64.trim_end_matches('=');
        let m = decode(RecordKind::Image, &json!({"image_base64": format!("data:image/png;base64,{unpadded}")})).expect("ok");
        assert_eq!(m.image, Some(ImageSource::Bytes(png.clone())));
        let m = decode(RecordKind::Image, &json!({"image_url": "https://example.com/a.jpg"})).expect("ok");
        assert_eq!(m.image, Some(ImageSource::Url(Url::parse("https://example.com/a.jpg").expect("url"))));
        // Raw image bytes as the record value.
        let m = decode_message(RecordKind::Image, Some(&png), &LIMITS).expect("raw ok");
        assert_eq!(m.image, Some(ImageSource::Payload));
        assert_eq!(m.id, None);

        assert_eq!(reason(decode(RecordKind::Image, &json!({"id": "x"}))), RejectReason::MissingField);
        assert_eq!(
            reason(decode(RecordKind::Image, &json!({"image_url": "https://a/b", "image_base64": b64}))),
            RejectReason::InvalidField
        );
        assert_eq!(reason(decode(RecordKind::Image, &json!({"image_url": "file:///etc/passwd"}))), RejectReason::BadUrl);
        assert_eq!(reason(decode(RecordKind::Image, &json!({"image_url": "not a url"}))), RejectReason::BadUrl);
        assert_eq!(reason(decode(RecordKind::Image, &json!({"image_url": 3}))), RejectReason::InvalidField);
        assert_eq!(reason(decode(RecordKind::Image, &json!({"image_base64": "%%%"}))), RejectReason::InvalidField);
        let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 2000]);
        assert_eq!(reason(decode(RecordKind::Image, &json!({"image_base64": big}))), RejectReason::TooLarge);
        let mut raw_big = png.clone();
        raw_big.resize(2000, 0);
        assert_eq!(reason(decode_message(RecordKind::Image, Some(&raw_big), &LIMITS)), RejectReason::TooLarge);
        assert_eq!(reason(decode_message(RecordKind::Image, Some(b"garbage"), &LIMITS)), RejectReason::NotJson);
    }

    #[test]
    fn pair_messages_with_regions() {
        let features: Vec<u8> = [0.5f32, 1.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let regions = json!({"image_w": 10, "image_h": 10, "boxes": [[0, 0, 10, 5]], "dim": 2,
                             "features_base64": base64::engine::general_purpose::STANDARD.encode(features)});
        let m = decode(
            RecordKind::Pair,
            &json!({"id": "pair-1", "caption": "a cat", "image_url": "http://example.com/c.png", "regions": regions}),
        )
        .expect("ok");
        assert_eq!(m.text.as_deref(), Some("a cat"));
        let seq = m.regions.expect("regions");
        assert_eq!(seq.len(), 2);
        assert_eq!(seq.features, vec![0.5, 1.5, 0.5, 1.5]);
        assert_eq!(seq.locations[1], [0.0, 0.0, 1.0, 0.5, 0.5]);
        assert_eq!(
            reason(decode(RecordKind::Pair, &json!({"caption": "a", "image_url": "http://e.com/x", "regions": {"dim": 1}}))),
            RejectReason::InvalidRegions
        );
        assert_eq!(reason(decode(RecordKind::Pair, &json!({"image_url": "http://e.com/x"}))), RejectReason::MissingField);
        assert_eq!(reason(decode(RecordKind::Pair, &json!({"caption": "a"}))), RejectReason::MissingField);
        // Raw image bytes are only accepted on the image topic.
        assert_eq!(reason(decode_message(RecordKind::Pair, Some(&tiny_png()), &LIMITS)), RejectReason::NotJson);
    }
}
