//! The records that flow through ingest: raw Kafka records in, model-ready samples or
//! rejections out. These types are the contract between the Kafka side (`kafka`), the
//! preprocessing side (`preprocess`) and the daemon.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// Which of the three input streams a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// Text-only documents (`topics.text`).
    Text,
    /// Image-only records (`topics.image`).
    Image,
    /// Image-caption pairs (`topics.pair`).
    Pair,
}

impl RecordKind {
    /// All kinds, in a fixed order (used for metrics and per-kind tables).
    pub const ALL: [RecordKind; 3] = [RecordKind::Text, RecordKind::Image, RecordKind::Pair];

    /// The lowercase name used in metric labels, configs and checkpoint metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Text => "text",
            RecordKind::Image => "image",
            RecordKind::Pair => "pair",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A partition of a topic: the key of every per-partition fact (consume position, offsets
/// tracked for a checkpoint, lag, resets). Serialised as `{"topic": .., "partition": ..}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct TopicPartition {
    /// Topic name (shared, cheap to clone).
    #[serde(serialize_with = "ser_topic", deserialize_with = "de_topic")]
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// The partition `partition` of `topic`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

fn ser_topic<S: serde::Serializer>(topic: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(topic)
}

fn de_topic<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(Arc::from)
}

/// Where a record sits in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourcePos {
    /// Topic and partition.
    pub tp: TopicPartition,
    /// Offset of this record in its partition.
    pub offset: i64,
}

impl SourcePos {
    /// The record at `offset` of partition `partition` of `topic`.
    pub fn new(topic: Arc<str>, partition: i32, offset: i64) -> Self {
        Self { tp: TopicPartition { topic, partition }, offset }
    }
}

impl fmt::Display for SourcePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.tp, self.offset)
    }
}

/// A record as consumed from Kafka, before any decoding.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Which stream (decided by the topic it came from).
    pub kind: RecordKind,
    /// Topic, partition and offset.
    pub pos: SourcePos,
    /// Record key, if any.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` for a tombstone (rejected as empty).
    pub payload: Option<Vec<u8>>,
    /// When the consumer handed it over (for latency metrics).
    pub received_at: Instant,
}

/// An image as a sequence of objects (regions). Row 0 is always the global `[IMG]` entry
/// (feature = mean of the region features, location `[0, 0, 1, 1, 1]`); rows 1.. are regions.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectSequence {
    /// Width of one region feature.
    pub dim: usize,
    /// Row-major `len() x dim` features.
    pub features: Vec<f32>,
    /// One 5-d location per row: `(x1/W, y1/H, x2/W, y2/H, area/(W*H))`.
    pub locations: Vec<[f32; 5]>,
    /// Optional detector class distributions, row-major `len() x classes`, rows summing to 1
    /// (row 0, the global entry, is the mean of the others).
    pub class_probs: Option<ClassProbs>,
}

impl ObjectSequence {
    /// Number of rows including the global `[IMG]` entry.
    pub fn len(&self) -> usize {
        self.locations.len()
    }

    /// True when there are no rows at all (never the case for a valid sequence).
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }
}

/// Detector class distributions attached to an object sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassProbs {
    /// Number of classes per row.
    pub classes: usize,
    /// Row-major `rows x classes` probabilities.
    pub probs: Vec<f32>,
}

/// A text as token ids, with the text kept for the rewriter and TF-IDF retrieval.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSequence {
    /// `[CLS] w1 .. wn [SEP]`, truncated to the configured maximum length.
    pub ids: Vec<u32>,
    /// The (normalised) text the ids came from.
    pub text: String,
}

/// A model-ready record.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Which stream it came from.
    pub kind: RecordKind,
    /// Where it came from.
    pub pos: SourcePos,
    /// The producer's `id` field, if present (logs only; never a metric label).
    pub id: Option<String>,
    /// Text or caption (present for text and pair records).
    pub text: Option<TokenSequence>,
    /// Object sequence (present for image and pair records).
    pub image: Option<ObjectSequence>,
}
