//! The library behind `unimod produce`: publishes JSONL files (one message per line) or, for
//! `--kind image`, image files and folders (raw bytes as the value) to Kafka.
//!
//! JSONL inputs are checked before anything is sent: a line that is not a JSON object stops
//! the run with its file and line number, so a file is never half-published by mistake.
//! Blank lines are skipped. Reading happens on a blocking thread that feeds a bounded
//! channel; sending keeps a bounded number of records in flight and reports progress after
//! every acknowledgement.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::KafkaError;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tokio::sync::mpsc;

use super::config::TopicsConfig;
use super::error::{BadLine, ProduceError};
use crate::record::RecordKind;

/// File extensions taken as images when walking a folder for `--kind image`.
pub const IMAGE_EXTENSIONS: &[&str] =
    &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// File extensions taken as JSONL inputs (also for `--kind image`).
pub const JSONL_EXTENSIONS: &[&str] = &["jsonl", "ndjson", "json"];

/// What to publish and where.
#[derive(Debug, Clone)]
pub struct ProduceRequest {
    /// Bootstrap brokers, `host:port[,...]`.
    pub brokers: String,
    /// Which stream the inputs belong to; decides the default topic.
    pub kind: RecordKind,
    /// Topic to publish to; `None`: the default topic of `kind` (`unimo.text`, ...).
    pub topic: Option<String>,
    /// JSONL files, or for [`RecordKind::Image`] also image files and folders.
    pub inputs: Vec<PathBuf>,
    /// Extra librdkafka producer properties.
    pub options: BTreeMap<String, String>,
    /// Records sent but not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// How long to wait for the topic's metadata before giving up.
    pub metadata_timeout: Duration,
}

impl ProduceRequest {
    /// A request with default options, 10000 records in flight and a 10 s metadata timeout.
    pub fn new(brokers: impl Into<String>, kind: RecordKind, inputs: Vec<PathBuf>) -> Self {
        ProduceRequest {
            brokers: brokers.into(),
            kind,
            topic: None,
            inputs,
            options: BTreeMap::new(),
            max_in_flight: 10_000,
            metadata_timeout: Duration::from_secs(10),
        }
    }

    /// The topic records go to.
    pub fn topic(&self) -> String {
        self.topic.clone().unwrap_or_else(|| TopicsConfig::default().topic(self.kind).to_owned())
    }
}

/// Progress so far, reported after every send and acknowledgement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProduceProgress {
    /// Records to send in all.
    pub total: u64,
    /// Records handed to the producer.
    pub sent: u64,
    /// Records the broker acknowledged.
    pub acknowledged: u64,
    /// Records that failed (not acknowledged).
    pub failed: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceSummary {
    /// The topic written to.
    pub topic: String,
    /// Records handed to the producer.
    pub sent: u64,
    /// Records the broker acknowledged.
    pub acknowledged: u64,
    /// Records that were not acknowledged.
    pub failed: u64,
    /// The first delivery error, if any.
    pub first_error: Option<String>,
}

impl ProduceSummary {
    /// True when every record was acknowledged.
    pub fn all_acknowledged(&self) -> bool {
        self.failed == 0 && self.acknowledged == self.sent
    }
}

impl std::fmt::Display for ProduceSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: sent {}, acknowledged {}, failed {}",
            self.topic, self.sent, self.acknowledged, self.failed
        )?;
        if let Some(error) = &self.first_error {
            write!(f, " (first error: {error})")?;
        }
        Ok(())
    }
}

/// One input, after folders were expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A file with one JSON message per line.
    Jsonl(PathBuf),
    /// An image file, sent as one record with the raw bytes as the value.
    Image(PathBuf),
}

/// Expands folders and classifies files. Text and pair inputs must be JSONL files (a folder
/// contributes its `*.jsonl` files); image inputs may also be image files or folders (walked
/// recursively, in name order).
pub fn plan_inputs(kind: RecordKind, inputs: &[PathBuf]) -> Result<Vec<Input>, ProduceError> {
    if inputs.is_empty() {
        return Err(ProduceError::NoInput("no input files given".into()));
    }
    let mut planned = Vec::new();
    for path in inputs {
        let meta = std::fs::metadata(path)
            .map_err(|source| ProduceError::Io { path: path.clone(), source })?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(path, &mut files)?;
            files.sort();
            let before = planned.len();
            for file in files {
                if has_extension(&file, JSONL_EXTENSIONS) {
                    planned.push(Input::Jsonl(file));
                } else if kind == RecordKind::Image && has_extension(&file, IMAGE_EXTENSIONS) {
                    planned.push(Input::Image(file));
                }
            }
            if planned.len() == before {
                return Err(ProduceError::NoInput(format!(
                    "{} holds no {} files",
                    path.display(),
                    if kind == RecordKind::Image { "image or JSONL" } else { "JSONL" }
                )));
            }
        } else if kind == RecordKind::Image && !has_extension(path, JSONL_EXTENSIONS) {
            planned.push(Input::Image(path.clone()));
        } else {
            planned.push(Input::Jsonl(path.clone()));
        }
    }
    Ok(planned)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ProduceError> {
    let io = |source| ProduceError::Io { path: dir.to_path_buf(), source };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(io)?;
        if file_type.is_dir() {
            walk(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| extensions.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// Checks every JSONL line and counts the records; returns the bad lines.
pub fn validate_inputs(inputs: &[Input]) -> Result<(u64, Vec<BadLine>), ProduceError> {
    let mut total = 0u64;
    let mut bad = Vec::new();
    for input in inputs {
        match input {
            Input::Image(_) => total += 1,
            Input::Jsonl(path) => {
                for_each_line(path, |line_no, line| {
                    total += 1;
                    if let Err(reason) = check_json_object(line) {
                        bad.push(BadLine { path: path.clone(), line: line_no, reason });
                    }
                    true
                })?;
            }
        }
    }
    Ok((total, bad))
}

/// `Ok` when `line` is one JSON object.
pub fn check_json_object(line: &str) -> Result<(), String> {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(other) => Err(format!("expected a JSON object, found {}", json_type(&other))),
        Err(error) => Err(error.to_string()),
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Calls `f(line_number, line)` for every non-blank line; `f` returns false to stop.
fn for_each_line(
    path: &Path,
    mut f: impl FnMut(usize, &str) -> bool,
) -> Result<(), ProduceError> {
    let io = |source| ProduceError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut line_no = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io)? == 0 {
            return Ok(());
        }
        line_no += 1;
        let trimmed = line.trim_end_matches(['\n', '\r']);
        if trimmed.trim().is_empty() {
            continue;
        }
        if !f(line_no, trimmed) {
            return Ok(());
        }
    }
}

/// A record read from an input: optional key and the value.
type Outgoing = (Option<Vec<u8>>, Vec<u8>);

/// Reads every input in order into `tx` (blocking; runs on the blocking pool).
fn read_inputs(inputs: Vec<Input>, tx: mpsc::Sender<Outgoing>) -> Result<(), ProduceError> {
    for input in inputs {
        match input {
            Input::Image(path) => {
                let bytes = std::fs::read(&path)
                    .map_err(|source| ProduceError::Io { path: path.clone(), source })?;
                let key = path.file_name().map(|n| n.to_string_lossy().as_bytes().to_vec());
                if tx.blocking_send((key, bytes)).is_err() {
                    return Ok(());
                }
            }
            Input::Jsonl(path) => {
                let mut open = true;
                for_each_line(&path, |_, line| {
                    open = tx.blocking_send((None, line.as_bytes().to_vec())).is_ok();
                    open
                })?;
                if !open {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Publishes the inputs of `request`, calling `progress` as records are sent and
/// acknowledged. Fails before sending anything when an input is unreadable, a JSONL line is
/// not a JSON object, or the topic's metadata cannot be fetched; delivery failures are
/// counted in the summary instead. Inputs that hold no record (empty files) give an empty
/// summary.
pub async fn produce(
    request: &ProduceRequest,
    progress: &mut (dyn FnMut(&ProduceProgress) + Send),
) -> Result<ProduceSummary, ProduceError> {
    let topic = request.topic();
    super::config::validate_topic_name("topic", &topic)?;
    let kind = request.kind;
    let inputs_arg = request.inputs.clone();
    let (inputs, total, bad) = tokio::task::spawn_blocking(move || {
        let inputs = plan_inputs(kind, &inputs_arg)?;
        let (total, bad) = validate_inputs(&inputs)?;
        Ok::<_, ProduceError>((inputs, total, bad))
    })
    .await??;
    if !bad.is_empty() {
        return Err(ProduceError::InvalidLines(bad));
    }
    if total == 0 {
        // Empty files are nothing to publish, not an error: every record (none) is acknowledged.
        tracing::warn!(%topic, "the inputs hold no records; nothing to publish");
        progress(&ProduceProgress::default());
        return Ok(ProduceSummary { topic, sent: 0, acknowledged: 0, failed: 0, first_error: None });
    }

    let producer = create_producer(request)?;
    check_topic(&producer, &topic, request.metadata_timeout).await?;

    let (tx, mut rx) = mpsc::channel::<Outgoing>(1024);
    let reader = tokio::task::spawn_blocking(move || read_inputs(inputs, tx));
    let max_in_flight = request.max_in_flight.max(1);
    let mut state = ProduceProgress { total, ..ProduceProgress::default() };
    let mut first_error: Option<String> = None;
    let mut in_flight: FuturesUnordered<DeliveryFuture> = FuturesUnordered::new();

    while let Some((key, value)) = rx.recv().await {
        loop {
            while in_flight.len() >= max_in_flight {
                settle(in_flight.next().await, &mut state, &mut first_error);
                progress(&state);
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).payload(value.as_slice());
            if let Some(key) = &key {
                record = record.key(key.as_slice());
            }
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push(delivery);
                    state.sent += 1;
                    progress(&state);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // librdkafka's queue is full: wait for one acknowledgement, then retry.
                    match in_flight.next().await {
                        Some(result) => {
                            settle(Some(result), &mut state, &mut first_error);
                            progress(&state);
                        }
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((error, _)) => {
                    state.sent += 1;
                    state.failed += 1;
                    first_error.get_or_insert_with(|| error.to_string());
                    progress(&state);
                    break;
                }
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        settle(Some(result), &mut state, &mut first_error);
        progress(&state);
    }
    reader.await??;
    Ok(ProduceSummary {
        topic,
        sent: state.sent,
        acknowledged: state.acknowledged,
        failed: state.failed,
        first_error,
    })
}

fn settle<E>(
    result: Option<Result<OwnedDeliveryResult, E>>,
    state: &mut ProduceProgress,
    first_error: &mut Option<String>,
) {
    match result {
        Some(Ok(Ok(_delivery))) => state.acknowledged += 1,
        Some(Ok(Err((error, _message)))) => {
            state.failed += 1;
            first_error.get_or_insert_with(|| error.to_string());
        }
        Some(Err(_canceled)) => {
            state.failed += 1;
            first_error.get_or_insert_with(|| "delivery report lost (producer closed)".into());
        }
        None => {}
    }
}

fn create_producer(request: &ProduceRequest) -> Result<FutureProducer, ProduceError> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &request.brokers)
        .set("client.id", "unimod-produce")
        .set("message.max.bytes", "67108864")
        .set("linger.ms", "5");
    for (key, value) in &request.options {
        client.set(key, value);
    }
    client.create().map_err(ProduceError::Create)
}

/// Fails fast when the brokers are unreachable or the topic does not exist, instead of
/// letting every record time out after `message.timeout.ms`.
async fn check_topic(
    producer: &FutureProducer,
    topic: &str,
    timeout: Duration,
) -> Result<(), ProduceError> {
    let client = producer.clone();
    let name = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || {
        client.client().fetch_metadata(Some(&name), timeout)
    })
    .await?
    .map_err(|source| ProduceError::Request { topic: topic.to_owned(), source })?;
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    match found {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        Some(t) => Err(ProduceError::Request {
            topic: topic.to_owned(),
            source: KafkaError::MetadataFetch(
                t.error().map(RDKafkaErrorCode::from).unwrap_or(RDKafkaErrorCode::UnknownTopic),
            ),
        }),
        None => Err(ProduceError::Request {
            topic: topic.to_owned(),
            source: KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_pass_and_everything_else_is_named() {
        assert!(check_json_object(r#"{"id": "a", "text": "hello"}"#).is_ok());
        assert!(check_json_object(r#"  {"nested": {"x": [1, 2]}}  "#).is_ok());
        assert_eq!(
            check_json_object("[1, 2]").expect_err("array"),
            "expected a JSON object, found an array"
        );
        assert!(check_json_object("\"text\"").expect_err("string").contains("a string"));
        assert!(check_json_object("{\"id\": ").expect_err("truncated").contains("EOF"));
        assert!(check_json_object("not json").is_err());
    }

    #[test]
    fn validation_reports_file_and_line_and_skips_blank_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("text.jsonl");
        std::fs::write(&path, "{\"text\": \"a\"}\n\n{broken\n{\"text\": \"b\"}\r\n42\n")
            .expect("write");
        let inputs = plan_inputs(RecordKind::Text, &[path.clone()]).expect("plan");
        assert_eq!(inputs, vec![Input::Jsonl(path.clone())]);
        let (total, bad) = validate_inputs(&inputs).expect("readable");
        assert_eq!(total, 4, "blank line is not a record");
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![3, 5]);
        assert!(bad.iter().all(|b| b.path == path));
        let message = ProduceError::InvalidLines(bad).to_string();
        assert!(message.contains("2 line(s)") && message.contains("text.jsonl:3"), "{message}");
    }

    #[test]
    fn image_folders_are_walked_in_order_and_jsonl_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        for name in ["b.png", "a.JPG", "notes.txt", "sub/c.webp", "meta.jsonl"] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        let planned = plan_inputs(RecordKind::Image, &[dir.path().to_path_buf()]).expect("plan");
        let names: Vec<String> = planned
            .iter()
            .map(|input| match input {
                Input::Image(p) => format!("img:{}", p.strip_prefix(dir.path()).unwrap_or(p).display()),
                Input::Jsonl(p) => format!("jsonl:{}", p.strip_prefix(dir.path()).unwrap_or(p).display()),
            })
            .collect();
        assert_eq!(names, vec!["img:a.JPG", "img:b.png", "jsonl:meta.jsonl", "img:sub/c.webp"]);
        // A text folder only contributes JSONL files; one without any is an error.
        let text = plan_inputs(RecordKind::Text, &[dir.path().to_path_buf()]).expect("plan");
        assert_eq!(text.len(), 1);
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            plan_inputs(RecordKind::Text, &[empty.path().to_path_buf()]),
            Err(ProduceError::NoInput(_))
        ));
        assert!(matches!(
            plan_inputs(RecordKind::Text, &[dir.path().join("missing.jsonl")]),
            Err(ProduceError::Io { .. })
        ));
        assert!(matches!(plan_inputs(RecordKind::Text, &[]), Err(ProduceError::NoInput(_))));
    }

    #[test]
    fn default_topic_follows_the_kind() {
        let mut request = ProduceRequest::new("h:1", RecordKind::Pair, vec![]);
        assert_eq!(request.topic(), "unimo.pair");
        request.topic = Some("custom".into());
        assert_eq!(request.topic(), "custom");
    }
}
