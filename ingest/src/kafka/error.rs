//! Errors of the Kafka side, one enum per operation whose callers branch on the cause.

use std::path::PathBuf;

use super::config::ConfigError;

/// Why the consumer could not start or an operation on it failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The `[kafka]` configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// librdkafka refused to create the client (bad option value, ...).
    #[error("cannot create the Kafka consumer: {0}")]
    Create(#[source] rdkafka::error::KafkaError),
    /// Subscribing to the input topics failed.
    #[error("cannot subscribe to {topics}: {source}")]
    Subscribe {
        /// The topics, comma-separated.
        topics: String,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A synchronous offset commit failed (broker unreachable, rebalance in progress, ...).
    /// The offsets stay uncommitted; a later commit of newer offsets supersedes them.
    #[error("committing offsets to group {group}: {source}")]
    Commit {
        /// The consumer group.
        group: String,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// An offset to commit is not a valid next offset.
    #[error("invalid offset {offset} for {topic}[{partition}]")]
    InvalidOffset {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The rejected offset.
        offset: i64,
    },
    /// A blocking librdkafka call could not be run (the runtime is shutting down).
    #[error("Kafka background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Why a dead-letter copy was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The `[kafka]` configuration has no `dead_letter_topic`, or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// librdkafka refused to create the producer.
    #[error("cannot create the dead-letter producer: {0}")]
    Create(#[source] rdkafka::error::KafkaError),
    /// The broker did not acknowledge the copy (after librdkafka's own retries).
    #[error("dead-letter copy of {source_pos} to {topic} failed: {error}")]
    Delivery {
        /// The dead-letter topic.
        topic: String,
        /// Where the rejected record came from (`topic[partition]@offset`).
        source_pos: String,
        /// librdkafka's error.
        #[source]
        error: rdkafka::error::KafkaError,
    },
}

/// A line of a JSONL input that is not a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What the JSON parser said.
    pub reason: String,
}

/// Why `unimod produce` (or the bootstrap reader) could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// No input file was given, or folders held no image.
    #[error("no input records: {0}")]
    NoInput(String),
    /// An input could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Lines of JSONL inputs that are not JSON objects; nothing was sent.
    #[error("{} line(s) are not JSON objects, nothing was sent; first: {}:{}: {}",
        .0.len(),
        .0.first().map(|b| b.path.display().to_string()).unwrap_or_default(),
        .0.first().map(|b| b.line).unwrap_or_default(),
        .0.first().map(|b| b.reason.as_str()).unwrap_or_default())]
    InvalidLines(Vec<BadLine>),
    /// The topic name is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// librdkafka refused to create the client.
    #[error("cannot create the Kafka client: {0}")]
    Create(#[source] rdkafka::error::KafkaError),
    /// A metadata or watermark request failed.
    #[error("Kafka request for {topic} failed: {source}")]
    Request {
        /// The topic concerned.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A blocking librdkafka call could not be run.
    #[error("Kafka background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
