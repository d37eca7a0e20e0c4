//! End to end through a real broker: every good message form goes in and comes out as a
//! sample (shapes and values checked), while bad records around them are rejected with their
//! reason and copied to the dead-letter topic with their headers, without stopping the flow.
//!
//! Path under test: tansu -> `KafkaConsumer` -> `run_pipeline(Preprocessor)` ->
//! ready samples / `DeadLetterProducer`; the tokenizer is trained on `bootstrap_texts`.

mod support;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use support::{config, input_topics, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use unimod_e2e::kafka::{produce_to_partition, producer, read_all};
use unimod_e2e::Broker;
use unimod_ingest::config::{FetchConfig, ImageConfig, PreprocessConfig, TextConfig};
use unimod_ingest::fetch::ImageFetcher;
use unimod_ingest::image::{PIXEL_MEAN, PIXEL_STD};
use unimod_ingest::kafka::{bootstrap_texts, DeadLetterProducer, KafkaConsumer, KafkaMetrics, StartOffsets};
use unimod_ingest::preprocess::{bootstrap_text, run_pipeline, Outcome, Preprocessor};
use unimod_ingest::record::{RecordKind, Sample};
use unimod_ingest::text::TextTokenizer;

/// A flat-colour PNG.
fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb(rgb));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encodes");
    out.into_inner()
}

/// Serves `body` as `image/png` on every path, on a loopback port.
async fn image_server(body: Vec<u8>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = Arc::clone(&body);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok(format!("http://{addr}/red.png"))
}

fn normalised(v: u8, ch: usize) -> f32 {
    (f32::from(v) / 255.0 - PIXEL_MEAN[ch]) / PIXEL_STD[ch]
}

/// Crop size 4, box scales [1, 2]: a global row, 1 + 4 boxes, 3 x 4 x 4 features per row,
/// every value the normalised colour of its channel.
fn assert_flat_objects(sample: &Sample, rgb: [u8; 3]) {
    let objects = sample.image.as_ref().expect("an object sequence");
    assert_eq!(objects.len(), 6, "{}", sample.pos);
    assert_eq!(objects.dim, 48);
    assert_eq!(objects.features.len(), 6 * 48);
    assert_eq!(objects.locations[0], [0.0, 0.0, 1.0, 1.0, 1.0]);
    for row in objects.features.chunks_exact(48) {
        for (ch, colour) in rgb.iter().enumerate() {
            for v in &row[ch * 16..(ch + 1) * 16] {
                assert!((v - normalised(*colour, ch)).abs() < 1e-4, "{} channel {ch}: {v}", sample.pos);
            }
        }
    }
}

fn text_of(sample: &Sample) -> &str {
    &sample.text.as_ref().expect("a token sequence").text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_records_flow_and_bad_ones_go_to_the_dead_letter_topic() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = input_topics(&broker, 1).await?;
    let dlq = broker.unique_topic("dead-letter", 1).await?;
    let red = png(16, 12, [220, 20, 30]);
    let blue = png(8, 8, [10, 40, 200]);
    let url = image_server(red.clone()).await?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let features: Vec<u8> = [1.0f32, 2.0, 3.0, 5.0, 6.0, 7.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let regions = json!({"image_w": 20, "image_h": 10, "boxes": [[0, 0, 10, 10], [10, 0, 20, 5]],
                         "dim": 3, "features_base64": b64(&features)});

    // (payload, expected rejection reason or None for good), per topic, in offset order.
    let j = |v: serde_json::Value| Some(v.to_string().into_bytes());
    let text: Vec<(Option<Vec<u8>>, Option<&str>)> = vec![
        (j(json!({"id": "t-1", "text": "a red square on a white field"})), None),
        (Some(b"this is not json".to_vec()), Some("not_json")),
        (j(json!({"id": "t-2", "text": "two blue circles", "v": 1, "unknown": true})), None),
        (j(json!({"id": "t-3"})), Some("missing_field")),
        (j(json!({"id": "t-4", "text": "   "})), Some("empty_text")),
        (j(json!({"text": "a green triangle"})), None),
    ];
    let image: Vec<(Option<Vec<u8>>, Option<&str>)> = vec![
        (j(json!({"id": "i-1", "image_base64": b64(&blue)})), None),
        (Some(red.clone()), None),
        (Some(b"GIF89a broken".to_vec()), Some("image_decode")),
        (j(json!({"id": "i-3", "image_url": url})), None),
        (j(json!({"id": "i-4", "image_base64": "!!"})), Some("invalid_field")),
        (j(json!({"id": "i-5", "image_url": url, "regions": regions})), None),
    ];
    let pair: Vec<(Option<Vec<u8>>, Option<&str>)> = vec![
        (j(json!({"id": "p-1", "caption": "a blue square", "image_base64": b64(&blue)})), None),
        (j(json!({"id": "p-2", "image_base64": b64(&blue)})), Some("missing_field")),
        (j(json!({"id": "p-3", "caption": "a red square", "image_url": url})), None),
        (j(json!({"id": "p-4", "caption": "x", "image_url": "ftp://example.com/a.png"})), Some("bad_url")),
        (j(json!({"id": "p-5", "caption": "a red square again", "image_base64": b64(&red)})), None),
    ];
    let kafka = producer(&broker.brokers())?;
    let mut expected: BTreeMap<(String, i64), (Option<Vec<u8>>, Option<&str>)> = BTreeMap::new();
    for (topic, records) in [(&topics.text, &text), (&topics.image, &image), (&topics.pair, &pair)] {
        for (payload, reason) in records {
            let offsets = produce_to_partition(&kafka, topic, 0, &[payload.clone().unwrap_or_default()]).await?;
            expected.insert((topic.clone(), offsets[0]), (payload.clone(), *reason));
        }
    }

    // Tokenizer from the stream itself, as the daemon bootstraps it.
    let cfg = config(&broker, &topics);
    let sample = bootstrap_texts(&cfg, 1000, Duration::from_secs(30)).await?;
    let mut corpus: Vec<String> = Vec::new();
    for payload in &sample {
        for kind in [RecordKind::Text, RecordKind::Pair] {
            corpus.extend(bootstrap_text(kind, Some(payload)));
        }
    }
    assert_eq!(corpus.len(), 7, "4 texts and 3 captions are usable: {corpus:?}");
    let text_config = TextConfig { vocab_size: 300, max_length: 16, ..TextConfig::default() };
    let repeated: Vec<String> = (0..20).flat_map(|_| corpus.iter().cloned()).collect();
    let tokenizer = Arc::new(TextTokenizer::train(&repeated, &text_config)?);

    let fetch = FetchConfig { allow_private_networks: true, retries: 0, ..FetchConfig::default() };
    let image_config = ImageConfig { box_scales: vec![1, 2], crop_size: 4, max_objects: 8, salient_boxes: 0, ..ImageConfig::default() };
    let preprocessor = Preprocessor::new(
        &PreprocessConfig { threads: 2, max_in_flight: 8 },
        &image_config,
        Arc::clone(&tokenizer),
        ImageFetcher::new(&fetch, None)?,
        None,
    )?;
    let dead_letter = DeadLetterProducer::with_topic(&cfg, &dlq)?;

    let cancel = CancellationToken::new();
    let (raw_tx, raw_rx) = mpsc::channel(cfg.queue_capacity);
    let (out_tx, mut out_rx) = mpsc::channel(16);
    let consumer = KafkaConsumer::start(&cfg, StartOffsets::new(), raw_tx, KafkaMetrics::unregistered(), cancel.clone())?;
    let pipeline = tokio::spawn(run_pipeline(preprocessor, raw_rx, out_tx, 8));

    let mut ready: BTreeMap<(String, i64), Sample> = BTreeMap::new();
    let mut rejected: BTreeMap<(String, i64), String> = BTreeMap::new();
    while ready.len() + rejected.len() < expected.len() {
        let processed = tokio::time::timeout(WAIT, out_rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("only {} + {} outcomes", ready.len(), rejected.len()))?
            .ok_or_else(|| anyhow::anyhow!("pipeline ended early"))?;
        let key = (processed.raw.pos.tp.topic.to_string(), processed.raw.pos.offset);
        match processed.outcome {
            Outcome::Ready(sample) => {
                assert!(ready.insert(key, sample).is_none(), "outcome twice");
            }
            Outcome::Rejected(rejection) => {
                dead_letter.send(&processed.raw, rejection.reason.as_str(), &rejection.detail).await?;
                assert!(rejected.insert(key, rejection.reason.as_str().to_owned()).is_none(), "outcome twice");
            }
        }
    }
    consumer.shutdown().await;
    cancel.cancel();
    pipeline.await?.map_err(|e| anyhow::anyhow!("{e}"))?;

    // Every record has the expected outcome.
    for (key, (_, reason)) in &expected {
        match reason {
            None => assert!(ready.contains_key(key), "{key:?} should be ready, got {:?}", rejected.get(key)),
            Some(reason) => assert_eq!(rejected.get(key).map(String::as_str), Some(*reason), "{key:?}"),
        }
    }
    // Shapes and values of the samples.
    let at = |topic: &str, offset: i64| &ready[&(topic.to_owned(), offset)];
    let special = tokenizer.special();
    for offset in [0, 2, 5] {
        let sample = at(&topics.text, offset);
        let ids = &sample.text.as_ref().expect("tokens").ids;
        assert_eq!((ids.first(), ids.last()), (Some(&special.cls), Some(&special.sep)));
        assert!(sample.image.is_none());
    }
    assert_eq!(text_of(at(&topics.text, 0)), "a red square on a white field");
    assert_eq!(at(&topics.text, 0).id.as_deref(), Some("t-1"));
    assert_eq!(text_of(at(&topics.text, 2)), "two blue circles");
    assert_flat_objects(at(&topics.image, 0), [10, 40, 200]);
    assert_flat_objects(at(&topics.image, 1), [220, 20, 30]);
    assert_flat_objects(at(&topics.image, 3), [220, 20, 30]);
    let detected = at(&topics.image, 5).image.as_ref().expect("objects");
    assert_eq!((detected.len(), detected.dim), (3, 3), "precomputed regions replace extraction");
    assert_eq!(detected.features, vec![3.0, 4.0, 5.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0]);
    assert_eq!(text_of(at(&topics.pair, 0)), "a blue square");
    assert_flat_objects(at(&topics.pair, 0), [10, 40, 200]);
    assert_flat_objects(at(&topics.pair, 2), [220, 20, 30]);
    assert_flat_objects(at(&topics.pair, 4), [220, 20, 30]);

    // The dead-letter topic holds each bad record once, value unchanged, with its headers.
    let brokers = broker.brokers();
    let copies = tokio::task::spawn_blocking(move || read_all(&brokers, &dlq, Duration::from_secs(30))).await??;
    assert_eq!(copies.len(), rejected.len());
    for copy in &copies {
        let topic = copy.header("unimod-source-topic").expect("source topic header");
        let offset: i64 = copy.header("unimod-source-offset").expect("offset header").parse()?;
        assert_eq!(copy.header("unimod-source-partition").as_deref(), Some("0"));
        let (payload, reason) = &expected[&(topic.clone(), offset)];
        let reason = reason.expect("only bad records are copied");
        assert_eq!(copy.payload.clone().unwrap_or_default(), payload.clone().unwrap_or_default());
        let error = copy.header("unimod-error").expect("error header");
        assert!(error.starts_with(&format!("{reason}: ")), "{error}");
    }
    Ok(())
}
