//! The `[kafka]` section of the configuration file: brokers, consumer group, the three input
//! topics, the optional dead-letter topic and the librdkafka options passed through.
//!
//! The doc comments on the fields are the configuration reference for this section.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::record::RecordKind;

/// librdkafka properties that unimod sets itself: overriding them would break the delivery
/// guarantees (offsets are stored and committed only after a durable checkpoint).
const RESERVED_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
];

/// Configuration of the Kafka side of unimod (TOML section `[kafka]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap brokers, `host:port[,host:port...]`. Required, no default.
    pub brokers: String,
    /// Consumer group id. unimod does not join the group (it assigns itself every partition of
    /// the three topics); it only commits offsets to it, trailing the newest durable
    /// checkpoint, so lag tools show real progress. unimod expects to be the group's only
    /// consumer and warns when the group has active members.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// The three input topics; the topic a record comes from decides how it is decoded.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Topic that receives an unchanged copy of every rejected record, with the headers
    /// `unimod-error`, `unimod-source-topic`, `unimod-source-partition` and
    /// `unimod-source-offset`. Omitted: rejected records are only counted and logged.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// How long a dead-letter copy is retried on retriable delivery errors (broker down,
    /// leader moving), in seconds. After that, or at once on a permanent error (copy over a
    /// size limit, write denied), a copy without the value is sent (header
    /// `unimod-value-dropped`); if that fails too, the failure is counted
    /// (`unimod_dead_letter_failures_total`) and the record is finished anyway. Only the
    /// record being copied waits; every other record goes on.
    #[serde(default = "default_dead_letter_retry_seconds")]
    pub dead_letter_retry_seconds: f64,
    /// Where to start a partition for which no checkpoint holds an offset:
    /// `"earliest"` (the oldest retained record) or `"latest"` (only new records).
    #[serde(default)]
    pub auto_offset_reset: OffsetReset,
    /// Capacity of each kind's queue between the consumer and preprocessing, in records (the
    /// three kinds have a queue each). When a kind's queue is full the consumer pauses that
    /// kind's partitions (and keeps consuming the others) until half of it is free.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Budget, in bytes, of the raw records (key and value) consumed and not yet through
    /// preprocessing, all kinds together; each kind may use a third of it. A kind whose share
    /// is used up is paused (like a full queue) until half of it is free again; one record
    /// larger than the share still passes, alone.
    #[serde(default = "default_queue_max_bytes")]
    pub queue_max_bytes: u64,
    /// How often consumer lag (`unimod_kafka_consumer_lag`) and broker reachability are
    /// refreshed, in seconds.
    #[serde(default = "default_lag_interval_seconds")]
    pub lag_interval_seconds: f64,
    /// The broker counts as unreachable (`/readyz` answers 503) when no request to it has
    /// succeeded for this many seconds, or when librdkafka reports all brokers down.
    #[serde(default = "default_health_window_seconds")]
    pub health_window_seconds: f64,
    /// Time limit for one synchronous offset commit or broker metadata request, in seconds.
    #[serde(default = "default_request_timeout_seconds")]
    pub request_timeout_seconds: f64,
    /// Extra librdkafka properties passed unchanged to every Kafka client unimod creates
    /// (consumer, dead-letter producer, `unimod produce`), e.g.
    /// `options = { "security.protocol" = "SASL_SSL", "session.timeout.ms" = "30000" }`.
    /// The properties unimod manages itself (`bootstrap.servers`, `group.id`,
    /// `enable.auto.commit`, `enable.auto.offset.store`, `auto.offset.reset`) are refused.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// The three input topics (TOML `topics = { text = "...", image = "...", pair = "..." }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Topic of text-only documents: `{"id": ..., "text": ...}`.
    #[serde(default = "default_text_topic")]
    pub text: String,
    /// Topic of image-only records: `{"id": ..., "image_url"|"image_base64": ...}` or raw bytes.
    #[serde(default = "default_image_topic")]
    pub image: String,
    /// Topic of image-caption pairs: `{"id": ..., "caption": ..., "image_url"|"image_base64": ...}`.
    #[serde(default = "default_pair_topic")]
    pub pair: String,
}

impl TopicsConfig {
    /// The topic configured for `kind`.
    pub fn topic(&self, kind: RecordKind) -> &str {
        match kind {
            RecordKind::Text => &self.text,
            RecordKind::Image => &self.image,
            RecordKind::Pair => &self.pair,
        }
    }

    /// The kind of record carried by `topic`, if it is one of the three input topics.
    pub fn kind_of(&self, topic: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|kind| self.topic(*kind) == topic)
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            text: default_text_topic(),
            image: default_image_topic(),
            pair: default_pair_topic(),
        }
    }
}

/// Start position of a partition that has no offset in the newest checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// The oldest record the broker still retains.
    #[default]
    Earliest,
    /// The end of the partition: only records produced from now on.
    Latest,
}

/// A configuration value that is not acceptable; names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kafka.{key}: {reason}")]
pub struct ConfigError {
    /// The key below `[kafka]`, e.g. `topics.text` or `options."group.id"`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { key: key.into(), reason: reason.into() }
    }
}

fn default_group_id() -> String {
    "unimod".to_owned()
}
fn default_text_topic() -> String {
    "unimo.text".to_owned()
}
fn default_image_topic() -> String {
    "unimo.image".to_owned()
}
fn default_pair_topic() -> String {
    "unimo.pair".to_owned()
}
fn default_queue_capacity() -> usize {
    1024
}
fn default_dead_letter_retry_seconds() -> f64 {
    60.0
}
fn default_queue_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_lag_interval_seconds() -> f64 {
    10.0
}
fn default_health_window_seconds() -> f64 {
    30.0
}
fn default_request_timeout_seconds() -> f64 {
    10.0
}

impl KafkaConfig {
    /// A configuration with every default and the given brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            group_id: default_group_id(),
            topics: TopicsConfig::default(),
            dead_letter_topic: None,
            dead_letter_retry_seconds: default_dead_letter_retry_seconds(),
            auto_offset_reset: OffsetReset::default(),
            queue_capacity: default_queue_capacity(),
            queue_max_bytes: default_queue_max_bytes(),
            lag_interval_seconds: default_lag_interval_seconds(),
            health_window_seconds: default_health_window_seconds(),
            request_timeout_seconds: default_request_timeout_seconds(),
            options: BTreeMap::new(),
        }
    }

    /// Checks every value; the error names the first offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::new("brokers", "must name at least one broker (host:port)"));
        }
        for broker in self.brokers.split(',') {
            let broker = broker.trim();
            let port_ok = broker
                .rsplit_once(':')
                .map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                .unwrap_or(false);
            if !port_ok {
                return Err(ConfigError::new(
                    "brokers",
                    format!("{broker:?} is not host:port"),
                ));
            }
        }
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::new("group_id", "must not be empty"));
        }
        for kind in RecordKind::ALL {
            let key = format!("topics.{kind}");
            validate_topic_name(&key, self.topics.topic(kind))?;
        }
        if self.topics.text == self.topics.image
            || self.topics.text == self.topics.pair
            || self.topics.image == self.topics.pair
        {
            return Err(ConfigError::new(
                "topics",
                "text, image and pair must be three different topics (the topic decides the kind)",
            ));
        }
        if let Some(dlq) = &self.dead_letter_topic {
            validate_topic_name("dead_letter_topic", dlq)?;
            if self.topics.kind_of(dlq).is_some() {
                return Err(ConfigError::new(
                    "dead_letter_topic",
                    format!("{dlq:?} is also an input topic"),
                ));
            }
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError::new("queue_capacity", "must be at least 1"));
        }
        if self.queue_max_bytes < 3 {
            return Err(ConfigError::new("queue_max_bytes", "must be at least 3 (a byte per kind)"));
        }
        positive_seconds("lag_interval_seconds", self.lag_interval_seconds)?;
        positive_seconds("dead_letter_retry_seconds", self.dead_letter_retry_seconds)?;
        positive_seconds("health_window_seconds", self.health_window_seconds)?;
        positive_seconds("request_timeout_seconds", self.request_timeout_seconds)?;
        for (key, value) in &self.options {
            if RESERVED_OPTIONS.contains(&key.as_str()) {
                return Err(ConfigError::new(
                    format!("options.{key:?}"),
                    "is managed by unimod and cannot be overridden",
                ));
            }
            // librdkafka checks names and values when building a native configuration;
            // no client is created and nothing is contacted.
            let mut probe = ClientConfig::new();
            probe.set(key, value);
            if let Err(err) = probe.create_native_config() {
                return Err(ConfigError::new(format!("options.{key:?}"), err.to_string()));
            }
        }
        Ok(())
    }

    /// [`Self::lag_interval_seconds`] as a duration.
    pub fn lag_interval(&self) -> Duration {
        seconds(self.lag_interval_seconds)
    }

    /// [`Self::health_window_seconds`] as a duration.
    pub fn health_window(&self) -> Duration {
        seconds(self.health_window_seconds)
    }

    /// [`Self::request_timeout_seconds`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        seconds(self.request_timeout_seconds)
    }

    /// A librdkafka configuration with the brokers and the pass-through options; the
    /// callers add what is specific to a consumer or producer.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }
}

fn seconds(value: f64) -> Duration {
    // validate() guarantees a positive finite value; clamp anyway so a bad value cannot panic.
    Duration::try_from_secs_f64(value).unwrap_or(Duration::from_secs(1))
}

fn positive_seconds(key: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 && value < 1.0e6 {
        Ok(())
    } else {
        Err(ConfigError::new(key, format!("{value} is not a positive number of seconds")))
    }
}

/// Kafka's own rule: 1 to 249 characters from `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(crate) fn validate_topic_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 249 || name == "." || name == ".." || !name.chars().all(legal)
    {
        return Err(ConfigError::new(
            key,
            format!("{name:?} is not a valid topic name (1-249 characters of a-z A-Z 0-9 . _ -)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<KafkaConfig, String> {
        toml::from_str::<KafkaConfig>(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_interface() {
        let cfg = parse(r#"brokers = "127.0.0.1:9092""#).expect("minimal config parses");
        assert_eq!(cfg.group_id, "unimod");
        assert_eq!(cfg.topics.text, "unimo.text");
        assert_eq!(cfg.topics.image, "unimo.image");
        assert_eq!(cfg.topics.pair, "unimo.pair");
        assert_eq!(cfg.dead_letter_topic, None);
        assert_eq!(cfg.auto_offset_reset, OffsetReset::Earliest);
        assert_eq!(cfg, KafkaConfig::new("127.0.0.1:9092"));
        cfg.validate().expect("defaults are valid");
    }

    #[test]
    fn brokers_is_required_and_unknown_keys_are_rejected() {
        let missing = parse(r#"group_id = "g""#).expect_err("brokers is required");
        assert!(missing.contains("brokers"), "{missing}");
        let unknown = parse("brokers = \"h:1\"\nbrokerz = 1").expect_err("unknown key");
        assert!(unknown.contains("brokerz"), "{unknown}");
        let nested = parse("brokers = \"h:1\"\ntopics = { text = \"a\", txt = \"b\" }")
            .expect_err("unknown topics key");
        assert!(nested.contains("txt"), "{nested}");
    }

    #[test]
    fn partial_topics_keep_the_other_defaults() {
        let cfg = parse("brokers = \"h:1\"\ntopics = { text = \"t\" }\nauto_offset_reset = \"latest\"")
            .expect("parses");
        assert_eq!(cfg.topics.text, "t");
        assert_eq!(cfg.topics.pair, "unimo.pair");
        assert_eq!(cfg.auto_offset_reset, OffsetReset::Latest);
        assert_eq!(cfg.topics.kind_of("t"), Some(RecordKind::Text));
        assert_eq!(cfg.topics.kind_of("unimo.image"), Some(RecordKind::Image));
        assert_eq!(cfg.topics.kind_of("other"), None);
    }

    #[test]
    fn validate_names_the_offending_key() {
        let check = |edit: &dyn Fn(&mut KafkaConfig), key: &str| {
            let mut cfg = KafkaConfig::new("localhost:9092");
            edit(&mut cfg);
            let err = cfg.validate().expect_err("must be rejected");
            assert_eq!(err.key, key, "{err}");
            assert!(err.to_string().starts_with(&format!("kafka.{key}: ")), "{err}");
        };
        check(&|c| c.brokers = " ".into(), "brokers");
        check(&|c| c.brokers = "localhost".into(), "brokers");
        check(&|c| c.brokers = "a:1,b:notaport".into(), "brokers");
        check(&|c| c.group_id = String::new(), "group_id");
        check(&|c| c.topics.image = "has space".into(), "topics.image");
        check(&|c| c.topics.pair = c.topics.text.clone(), "topics");
        check(&|c| c.dead_letter_topic = Some("unimo.text".into()), "dead_letter_topic");
        check(&|c| c.dead_letter_topic = Some("..".into()), "dead_letter_topic");
        check(&|c| c.queue_capacity = 0, "queue_capacity");
        check(&|c| c.queue_max_bytes = 0, "queue_max_bytes");
        check(&|c| c.lag_interval_seconds = 0.0, "lag_interval_seconds");
        check(&|c| c.health_window_seconds = f64::NAN, "health_window_seconds");
        check(&|c| c.request_timeout_seconds = -1.0, "request_timeout_seconds");
        check(
            &|c| {
                c.options.insert("enable.auto.commit".into(), "true".into());
            },
            "options.\"enable.auto.commit\"",
        );
        check(
            &|c| {
                c.options.insert("no.such.property".into(), "1".into());
            },
            "options.\"no.such.property\"",
        );
        check(
            &|c| {
                c.options.insert("session.timeout.ms".into(), "soon".into());
            },
            "options.\"session.timeout.ms\"",
        );
    }

    #[test]
    fn valid_options_pass_through() {
        let mut cfg = KafkaConfig::new("a:1,b:2");
        cfg.options.insert("session.timeout.ms".into(), "12000".into());
        cfg.dead_letter_topic = Some("unimo.dead-letter".into());
        cfg.validate().expect("valid");
        let client = cfg.client_config();
        assert_eq!(client.get("bootstrap.servers"), Some("a:1,b:2"));
        assert_eq!(client.get("session.timeout.ms"), Some("12000"));
        assert_eq!(cfg.lag_interval(), Duration::from_secs(10));
    }
}
