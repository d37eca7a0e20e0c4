//! Every good message form through the preprocessor (shapes and values checked), every bad
//! form with its reason, and the pipeline's per-partition order under a stuck download.

mod common;

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use common::TestServer;
use serde_json::json;
use tokio::sync::mpsc;
use unimod_ingest::config::{FetchConfig, ImageConfig, PreprocessConfig, TextConfig};
use unimod_ingest::fetch::ImageFetcher;
use unimod_ingest::image::{PIXEL_MEAN, PIXEL_STD};
use unimod_ingest::preprocess::{bootstrap_text, run_pipeline, Outcome, Preprocessor, Processed};
use unimod_ingest::record::{RawRecord, RecordKind, Sample, SourcePos};
use unimod_ingest::reject::RejectReason;
use unimod_ingest::telemetry::IngestMetrics;
use unimod_ingest::text::TextTokenizer;

const CORPUS: &[&str] = &[
    "a red car parked on the street",
    "two dogs playing in the park",
    "a man riding a horse on the beach",
    "the cat sleeps on a blue sofa",
];

fn tokenizer() -> Arc<TextTokenizer> {
    let texts: Vec<String> = (0..10).flat_map(|i| CORPUS.iter().map(move |s| format!("{s} {i}"))).collect();
    let config = TextConfig { vocab_size: 400, max_length: 16, ..TextConfig::default() };
    Arc::new(TextTokenizer::train(&texts, &config).expect("tokenizer trains"))
}

fn image_config() -> ImageConfig {
    ImageConfig { box_scales: vec![1, 2], crop_size: 4, max_objects: 8, salient_boxes: 0, ..ImageConfig::default() }
}

fn preprocessor(metrics: Option<IngestMetrics>) -> Preprocessor {
    let fetch = FetchConfig { allow_private_networks: true, timeout_seconds: 30.0, retries: 0, ..FetchConfig::default() };
    let fetcher = ImageFetcher::new(&fetch, metrics.clone()).expect("fetcher");
    Preprocessor::new(&PreprocessConfig { threads: 2, max_in_flight: 8 }, &image_config(), tokenizer(), fetcher, metrics)
        .expect("preprocessor")
}

fn raw(kind: RecordKind, partition: i32, offset: i64, payload: Option<Vec<u8>>) -> RawRecord {
    RawRecord {
        kind,
        pos: SourcePos::new(Arc::from(format!("t-{kind}")), partition, offset),
        key: None,
        payload,
        received_at: Instant::now(),
    }
}

fn json_raw(kind: RecordKind, value: serde_json::Value) -> RawRecord {
    raw(kind, 0, 0, Some(value.to_string().into_bytes()))
}

async fn ready(pre: &Preprocessor, record: RawRecord) -> Sample {
    match pre.process(record).await.outcome {
        Outcome::Ready(sample) => sample,
        Outcome::Rejected(r) => panic!("rejected: {r}"),
    }
}

async fn rejected(pre: &Preprocessor, record: RawRecord) -> RejectReason {
    match pre.process(record).await.outcome {
        Outcome::Ready(sample) => panic!("accepted: {sample:?}"),
        Outcome::Rejected(r) => r.reason,
    }
}

fn normalised(v: u8, ch: usize) -> f32 {
    (f32::from(v) / 255.0 - PIXEL_MEAN[ch]) / PIXEL_STD[ch]
}

/// A flat-colour image gives every row the same feature: the normalised colour per channel.
fn assert_flat_objects(sample: &Sample, rgb: [u8; 3]) {
    let objects = sample.image.as_ref().expect("objects");
    assert_eq!(objects.len(), 6, "global row + 1 + 4 boxes");
    assert_eq!(objects.dim, 3 * 4 * 4);
    assert_eq!(objects.features.len(), 6 * 48);
    assert_eq!(objects.locations[0], [0.0, 0.0, 1.0, 1.0, 1.0]);
    assert_eq!(objects.locations[1], [0.0, 0.0, 1.0, 1.0, 1.0]);
    assert_eq!(objects.locations[5], [0.5, 0.5, 1.0, 1.0, 0.25]);
    for row in objects.features.chunks_exact(48) {
        for ch in 0..3 {
            for v in &row[ch * 16..(ch + 1) * 16] {
                assert!((v - normalised(rgb[ch], ch)).abs() < 1e-4, "{v} vs {}", normalised(rgb[ch], ch));
            }
        }
    }
}

#[tokio::test]
async fn good_messages_become_samples() {
    let server = TestServer::start().await;
    let pre = preprocessor(None);
    let tok = pre.tokenizer().clone();

    let text = ready(&pre, json_raw(RecordKind::Text, json!({"id": "doc-1", "text": "a red  car"}))).await;
    let tokens = text.text.expect("tokens");
    assert_eq!(tokens.text, "a red car");
    assert_eq!(tokens.ids, tok.encode("a red car").expect("encode").ids);
    assert_eq!((tokens.ids[0], *tokens.ids.last().expect("ids")), (1, 2));
    assert_eq!(text.id.as_deref(), Some("doc-1"));
    assert!(text.image.is_none());

    let png = common::png(40, 30, [10, 200, 90]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let image = ready(&pre, json_raw(RecordKind::Image, json!({"id": "img-1", "image_base64": b64}))).await;
    assert!(image.text.is_none());
    assert_flat_objects(&image, [10, 200, 90]);

    let raw_png = ready(&pre, raw(RecordKind::Image, 0, 1, Some(png.clone()))).await;
    assert_eq!(raw_png.image, image.image, "raw bytes and base64 give the same objects");

    let raw_jpeg = ready(&pre, raw(RecordKind::Image, 0, 2, Some(common::jpeg(64, 48)))).await;
    let objects = raw_jpeg.image.expect("objects");
    assert_eq!((objects.len(), objects.dim), (6, 48));
    assert!(objects.features.iter().all(|v| v.is_finite() && v.abs() < 3.0));

    let url = ready(&pre, json_raw(RecordKind::Image, json!({"image_url": server.url("/ok.png")}))).await;
    assert_flat_objects(&url, [200, 100, 50]);

    let pair = ready(
        &pre,
        json_raw(RecordKind::Pair, json!({"id": "pair-1", "caption": "two dogs", "image_url": server.url("/ok.png")})),
    )
    .await;
    assert_eq!(pair.text.as_ref().expect("caption").ids, tok.encode("two dogs").expect("encode").ids);
    assert_flat_objects(&pair, [200, 100, 50]);

    let pair64 = ready(&pre, json_raw(RecordKind::Pair, json!({"caption": "a cat", "image_base64": b64}))).await;
    assert_flat_objects(&pair64, [10, 200, 90]);

    // Precomputed regions replace the built-in extractor (and the URL is not fetched).
    let features: Vec<u8> = [1.0f32, 2.0, 3.0, 5.0, 6.0, 7.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let regions = json!({"image_w": 20, "image_h": 10, "boxes": [[0, 0, 10, 10], [10, 0, 20, 5]], "dim": 3,
                         "features_base64": base64::engine::general_purpose::STANDARD.encode(features)});
    let hits_before = server.hits("/ok.png");
    let detected = ready(
        &pre,
        json_raw(RecordKind::Pair, json!({"caption": "a cat", "image_url": server.url("/ok.png"), "regions": regions})),
    )
    .await;
    let objects = detected.image.expect("objects");
    assert_eq!(objects.dim, 3);
    assert_eq!(objects.features, vec![3.0, 4.0, 5.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0]);
    assert_eq!(objects.locations[1], [0.0, 0.0, 0.5, 1.0, 0.5]);
    assert_eq!(objects.locations[2], [0.5, 0.0, 1.0, 0.5, 0.25]);
    assert_eq!(server.hits("/ok.png"), hits_before);
}

/// Given the model's width, the preprocessor alone decides: regions of another width are
/// rejected (`invalid_regions`, naming both widths) and counted once; the same width, and
/// built-in crops of the configured width, are ready.
#[tokio::test]
async fn regions_of_another_width_than_the_models_are_rejected_here() {
    let registry = prometheus::Registry::new();
    let metrics = IngestMetrics::new(&registry).expect("metrics");
    // image_config(): crop_size 4, so built-in crops are 3 x 4 x 4 = 48 wide.
    let pre = preprocessor(Some(metrics)).with_feature_dim(48);
    let regions = |dim: usize| {
        let features: Vec<u8> = vec![0.5f32; 2 * dim].iter().flat_map(|v| v.to_le_bytes()).collect();
        json!({"image_w": 20, "image_h": 10, "boxes": [[0, 0, 10, 10], [10, 0, 20, 5]], "dim": dim,
               "features_base64": base64::engine::general_purpose::STANDARD.encode(features)})
    };
    let wrong = json_raw(RecordKind::Image, json!({"image_url": "http://127.0.0.1:9/x.png", "regions": regions(3)}));
    match pre.process(wrong).await.outcome {
        Outcome::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::InvalidRegions);
            assert!(r.to_string().contains("width 3 differs from the model's 48"), "{r}");
        }
        Outcome::Ready(s) => panic!("a 3-wide region sequence reached training: {s:?}"),
    }
    let right = ready(&pre, json_raw(RecordKind::Image, json!({"image_url": "http://127.0.0.1:9/x.png", "regions": regions(48)}))).await;
    assert_eq!(right.image.expect("objects").dim, 48);
    let png = base64::engine::general_purpose::STANDARD.encode(common::png(8, 8, [10, 20, 30]));
    let crops = ready(&pre, json_raw(RecordKind::Image, json!({"image_base64": png}))).await;
    assert_eq!(crops.image.expect("objects").dim, 48);
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).expect("encode");
    let line = text.lines().find(|l| l.contains("reason=\"invalid_regions\"") && l.contains("kind=\"image\""));
    assert!(line.is_some_and(|l| l.ends_with(" 1")), "counted once: {line:?}");
}

#[tokio::test]
async fn bad_messages_are_rejected_with_their_reason_and_counted() {
    let server = TestServer::start().await;
    let registry = prometheus::Registry::new();
    let metrics = IngestMetrics::new(&registry).expect("metrics");
    let pre = preprocessor(Some(metrics.clone()));
    let huge_png_header = common::png_declaring(200_000, 200_000);
    let cases: Vec<(RawRecord, RejectReason)> = vec![
        (raw(RecordKind::Text, 0, 0, None), RejectReason::EmptyPayload),
        (raw(RecordKind::Text, 0, 0, Some(b"plain text".to_vec())), RejectReason::NotJson),
        (raw(RecordKind::Pair, 0, 0, Some(b"{\"caption\": ".to_vec())), RejectReason::NotJson),
        (json_raw(RecordKind::Text, json!({"id": "x"})), RejectReason::MissingField),
        (json_raw(RecordKind::Text, json!({"text": "   "})), RejectReason::EmptyText),
        (json_raw(RecordKind::Text, json!({"text": ["a"]})), RejectReason::InvalidField),
        (json_raw(RecordKind::Text, json!({"v": 9, "text": "a"})), RejectReason::BadSchema),
        (json_raw(RecordKind::Pair, json!({"caption": "a", "image_url": "ftp://x/y.png"})), RejectReason::BadUrl),
        (json_raw(RecordKind::Pair, json!({"caption": "a"})), RejectReason::MissingField),
        (json_raw(RecordKind::Image, json!({"image_base64": "!!"})), RejectReason::InvalidField),
        (
            json_raw(RecordKind::Image, json!({"image_base64": base64::engine::general_purpose::STANDARD.encode(b"not an image")})),
            RejectReason::UnsupportedFormat,
        ),
        (raw(RecordKind::Image, 0, 0, Some(huge_png_header)), RejectReason::ImageTooLarge),
        (raw(RecordKind::Image, 0, 0, Some(b"GIF89a broken".to_vec())), RejectReason::ImageDecode),
        (json_raw(RecordKind::Image, json!({"image_url": server.url("/missing.png")})), RejectReason::HttpStatus),
        (json_raw(RecordKind::Image, json!({"image_url": server.url("/page.html")})), RejectReason::BadContentType),
        (json_raw(RecordKind::Image, json!({"image_url": server.url("/not-an-image.png")})), RejectReason::UnsupportedFormat),
        (json_raw(RecordKind::Image, json!({"image_url": server.url("/loop")})), RejectReason::TooManyRedirects),
        (
            json_raw(RecordKind::Image, json!({"image_url": "http://e.com/x", "regions": {"image_w": 1}})),
            RejectReason::InvalidRegions,
        ),
    ];
    let n = cases.len();
    for (record, expected) in cases {
        let kind = record.kind;
        assert_eq!(rejected(&pre, record).await, expected, "{kind}");
    }
    let total: u64 = RecordKind::ALL
        .iter()
        .flat_map(|k| RejectReason::ALL.iter().map(move |r| (k, r)))
        .map(|(k, r)| metrics.records_rejected.with_label_values(&[k.as_str(), r.as_str()]).get())
        .sum();
    assert_eq!(total, n as u64);
    assert_eq!(metrics.records_rejected.with_label_values(&["image", "http_status"]).get(), 1);
}

#[test]
fn bootstrap_text_reads_texts_and_captions() {
    assert_eq!(bootstrap_text(RecordKind::Text, Some(br#"{"text": " a  b "}"#)).as_deref(), Some("a b"));
    assert_eq!(bootstrap_text(RecordKind::Pair, Some(br#"{"caption": "c", "image_url": "x"}"#)).as_deref(), Some("c"));
    assert_eq!(bootstrap_text(RecordKind::Image, Some(br#"{"text": "a"}"#)), None);
    assert_eq!(bootstrap_text(RecordKind::Text, Some(b"nope")), None);
    assert_eq!(bootstrap_text(RecordKind::Text, None), None);
}

fn text_record(partition: i32, offset: i64) -> RawRecord {
    let mut r = json_raw(RecordKind::Text, json!({"text": format!("record {offset}")}));
    r.pos = SourcePos::new(Arc::from("text"), partition, offset);
    r
}

#[tokio::test]
async fn pipeline_keeps_partition_order_and_a_stuck_download_blocks_only_its_partition() {
    let server = TestServer::start().await;
    let pre = preprocessor(None);
    let (in_tx, in_rx) = mpsc::channel(4);
    let (out_tx, mut out_rx) = mpsc::channel::<Processed>(4);
    let pipeline = tokio::spawn(run_pipeline(pre, in_rx, out_tx, 4));

    // Partition 0: a download that waits for the gate, then two texts.
    let mut gated = json_raw(RecordKind::Image, json!({"image_url": server.url("/gate.png")}));
    gated.pos = SourcePos::new(Arc::from("text"), 0, 0);
    in_tx.send(gated).await.expect("send");
    in_tx.send(text_record(0, 1)).await.expect("send");
    in_tx.send(text_record(0, 2)).await.expect("send");
    // Partition 1 keeps flowing: three slots are held by partition 0, one is left.
    let feeder = {
        let in_tx = in_tx.clone();
        tokio::spawn(async move {
            for offset in 0..6 {
                in_tx.send(text_record(1, offset)).await.expect("send");
            }
        })
    };
    for expected in 0..6 {
        let out = out_rx.recv().await.expect("output");
        assert_eq!((out.raw.pos.tp.partition, out.raw.pos.offset), (1, expected));
        assert!(matches!(out.outcome, Outcome::Ready(_)));
    }
    feeder.await.expect("feeder");
    server.open_gate();
    for expected in 0..3 {
        let out = out_rx.recv().await.expect("output");
        assert_eq!((out.raw.pos.tp.partition, out.raw.pos.offset), (0, expected));
        assert!(matches!(out.outcome, Outcome::Ready(_)), "{:?}", out.outcome);
    }
    drop(in_tx);
    assert!(out_rx.recv().await.is_none(), "the pipeline ends when its input closes");
    pipeline.await.expect("join").expect("pipeline ok");
}

#[tokio::test]
async fn pipeline_reports_rejections_in_order_and_stops_when_output_is_dropped() {
    let pre = preprocessor(None);
    let (in_tx, in_rx) = mpsc::channel(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Processed>(16);
    let pipeline = tokio::spawn(run_pipeline(pre, in_rx, out_tx, 8));
    for offset in 0..10 {
        let mut r = text_record(0, offset);
        if offset % 3 == 0 {
            r.payload = Some(b"bad".to_vec());
        }
        in_tx.send(r).await.expect("send");
    }
    for offset in 0..10 {
        let out = out_rx.recv().await.expect("output");
        assert_eq!(out.raw.pos.offset, offset);
        assert_eq!(matches!(out.outcome, Outcome::Rejected(_)), offset % 3 == 0);
    }
    drop(out_rx);
    in_tx.send(text_record(0, 10)).await.expect("send");
    assert!(pipeline.await.expect("join").is_err(), "output dropped");
}
