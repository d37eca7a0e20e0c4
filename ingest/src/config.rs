//! Configuration of the non-Kafka half of ingest: image fetching (`[fetch]`), image decoding
//! and object sequences (`[image]`), tokenisation (`[text]`) and the preprocessing pool
//! (`[preprocess]`).
//!
//! Every struct rejects unknown keys and fills missing ones from its `Default`; the `///`
//! comments on the fields are the configuration reference. `validate()` checks value ranges and
//! names the offending key in its error (`fetch.max_image_bytes must be > 0`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A configuration value out of range; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {problem}")]
pub struct ConfigError {
    /// Dotted key, e.g. `fetch.max_image_bytes`.
    pub key: String,
    /// What is wrong with it, e.g. `must be > 0`.
    pub problem: String,
}

impl ConfigError {
    fn new(key: &str, problem: impl Into<String>) -> Self {
        Self { key: key.to_string(), problem: problem.into() }
    }
}

fn positive_seconds(key: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::new(key, "must be a finite number of seconds > 0"))
    }
}

/// `[fetch]`: downloading images named by `image_url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Allow image URLs whose host is or resolves to a loopback, private, link-local,
    /// multicast, unspecified, IPv4-mapped or IPv6 unique-local address. Keep `false` in
    /// production: producers must not be able to make the daemon probe internal services.
    pub allow_private_networks: bool,
    /// Largest accepted image body in bytes, enforced while streaming (a `Content-Length`
    /// header is never trusted).
    pub max_image_bytes: u64,
    /// Total time allowed for one download attempt (connect, headers and body), in seconds.
    pub timeout_seconds: f64,
    /// Time allowed to establish the TCP (and TLS) connection, in seconds.
    pub connect_timeout_seconds: f64,
    /// Largest number of redirects followed; every hop is checked like the first URL.
    pub max_redirects: u32,
    /// Largest number of downloads running at once across the process.
    pub max_concurrent: usize,
    /// Extra attempts after a timeout or an HTTP 5xx answer (other failures are not retried).
    pub retries: u32,
    /// Delay before the first retry, in milliseconds; doubled for every further retry.
    pub retry_backoff_ms: u64,
    /// `User-Agent` header sent with every request.
    pub user_agent: String,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            allow_private_networks: false,
            max_image_bytes: 20_000_000,
            timeout_seconds: 10.0,
            connect_timeout_seconds: 5.0,
            max_redirects: 5,
            max_concurrent: 32,
            retries: 2,
            retry_backoff_ms: 200,
            user_agent: concat!("unimod/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

impl FetchConfig {
    /// Checks value ranges; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_image_bytes == 0 {
            return Err(ConfigError::new("fetch.max_image_bytes", "must be > 0"));
        }
        positive_seconds("fetch.timeout_seconds", self.timeout_seconds)?;
        positive_seconds("fetch.connect_timeout_seconds", self.connect_timeout_seconds)?;
        if self.max_concurrent == 0 {
            return Err(ConfigError::new("fetch.max_concurrent", "must be > 0"));
        }
        if self.retries > 10 {
            return Err(ConfigError::new("fetch.retries", "must be <= 10"));
        }
        if self.user_agent.is_empty() || self.user_agent.chars().any(char::is_control) {
            return Err(ConfigError::new("fetch.user_agent", "must be non-empty printable text"));
        }
        Ok(())
    }

    /// `timeout_seconds` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_seconds)
    }

    /// `connect_timeout_seconds` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout_seconds)
    }
}

/// `[image]`: decoding limits and the built-in object sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Grid sizes of the multi-scale box pyramid: scale `n` cuts the image into `n x n`
    /// boxes. The default `[1, 2, 3, 4, 6]` gives 66 regions, plus the global `[IMG]` row.
    pub box_scales: Vec<u32>,
    /// Side of the square RGB patch every box is resampled to; the region feature width is
    /// `3 * crop_size * crop_size`.
    pub crop_size: u32,
    /// Largest number of saliency-ranked object boxes added after the pyramid: the tight
    /// bounding boxes of the largest regions that stand out from the image's border colour
    /// (connected pixels of one colour), so that an object is cropped whole and centred
    /// whatever its position. Default 6 (measured on the synthetic stream, BENCHMARKS.md
    /// "Salient object boxes": image->text R@5 0.82 -> 0.885 at 1,000 steps); 0 turns them off.
    pub salient_boxes: usize,
    /// Largest accepted image area in pixels, checked from the header before decoding.
    pub max_pixels: u64,
    /// Largest accepted width or height in pixels, checked from the header before decoding.
    pub max_dimension: u32,
    /// Largest number of regions (excluding the global row) in an object sequence; applies to
    /// precomputed detector regions too (more are rejected).
    pub max_objects: usize,
    /// Decode JPEGs at a reduced scale (1/2, 1/4 or 1/8) when the smallest box still covers
    /// at least `crop_size` pixels: same features at a fraction of the cost.
    pub jpeg_reduced_decode: bool,
    /// Largest accepted magnitude of a precomputed region feature value (and of a box
    /// coordinate); a record with a larger one is rejected (`invalid_regions`). Detector
    /// features are O(1)-O(100); huge finite values overflow the model's arithmetic.
    pub max_abs_feature: f64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            box_scales: vec![1, 2, 3, 4, 6],
            crop_size: 16,
            salient_boxes: 6,
            max_pixels: 40_000_000,
            max_dimension: 16_384,
            max_objects: 100,
            jpeg_reduced_decode: true,
            max_abs_feature: 1e4,
        }
    }
}

impl ImageConfig {
    /// Checks value ranges; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.box_scales.is_empty() {
            return Err(ConfigError::new("image.box_scales", "must not be empty"));
        }
        if self.box_scales.iter().any(|&s| s == 0 || s > 64) {
            return Err(ConfigError::new("image.box_scales", "entries must be in 1..=64"));
        }
        if self.crop_size == 0 || self.crop_size > 256 {
            return Err(ConfigError::new("image.crop_size", "must be in 1..=256"));
        }
        if self.max_pixels == 0 {
            return Err(ConfigError::new("image.max_pixels", "must be > 0"));
        }
        if self.max_dimension == 0 {
            return Err(ConfigError::new("image.max_dimension", "must be > 0"));
        }
        if self.max_objects == 0 {
            return Err(ConfigError::new("image.max_objects", "must be > 0"));
        }
        if !(self.max_abs_feature.is_finite() && self.max_abs_feature > 0.0 && self.max_abs_feature <= 1e30) {
            return Err(ConfigError::new("image.max_abs_feature", "must be in (0, 1e30]"));
        }
        if self.salient_boxes > 64 {
            return Err(ConfigError::new("image.salient_boxes", "must be in 0..=64"));
        }
        if self.region_count() + self.salient_boxes > self.max_objects {
            return Err(ConfigError::new(
                "image.box_scales",
                format!(
                    "give {} regions with image.salient_boxes = {}, more than image.max_objects = {}",
                    self.region_count() + self.salient_boxes,
                    self.salient_boxes,
                    self.max_objects
                ),
            ));
        }
        Ok(())
    }

    /// Number of built-in pyramid regions (without the global row and the salient boxes): the
    /// sum of `n * n` over the scales.
    pub fn region_count(&self) -> usize {
        self.box_scales.iter().map(|&s| (s as usize) * (s as usize)).sum()
    }

    /// Width of one built-in region feature: `3 * crop_size^2`.
    pub fn feature_dim(&self) -> usize {
        3 * (self.crop_size as usize) * (self.crop_size as usize)
    }
}

/// `[text]`: the tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextConfig {
    /// A Hugging Face `tokenizer.json` to use. When absent, a byte-level BPE is trained from
    /// the first `bootstrap_records` texts and captions of the stream (and then stored with
    /// every checkpoint, so a restart keeps the same vocabulary).
    pub tokenizer_path: Option<PathBuf>,
    /// Largest sequence length in tokens, `[CLS]` and `[SEP]` included; longer texts are
    /// truncated.
    pub max_length: usize,
    /// Vocabulary size of a trained tokenizer (special tokens included).
    pub vocab_size: usize,
    /// Number of texts and captions collected from the stream to train the tokenizer.
    pub bootstrap_records: usize,
    /// Smallest pair frequency for a BPE merge when training.
    pub min_frequency: u64,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            tokenizer_path: None,
            max_length: 128,
            vocab_size: 16_384,
            bootstrap_records: 10_000,
            min_frequency: 2,
        }
    }
}

impl TextConfig {
    /// Checks value ranges; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_length < 3 {
            return Err(ConfigError::new("text.max_length", "must be >= 3 ([CLS] w [SEP])"));
        }
        // 256 byte symbols plus the special tokens are always in the vocabulary.
        if self.vocab_size < 300 {
            return Err(ConfigError::new("text.vocab_size", "must be >= 300"));
        }
        if self.tokenizer_path.is_none() && self.bootstrap_records == 0 {
            return Err(ConfigError::new(
                "text.bootstrap_records",
                "must be > 0 when text.tokenizer_path is not set",
            ));
        }
        if let Some(path) = &self.tokenizer_path {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::new("text.tokenizer_path", "must not be empty"));
            }
        }
        Ok(())
    }
}

/// `[preprocess]`: the CPU pool that decodes images and tokenises texts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Worker threads for decoding and tokenising; 0 means one per CPU core.
    pub threads: usize,
    /// Largest number of records between the consumer and the trainer that are being
    /// processed or waiting for an earlier record of their partition; the consumer is paused
    /// beyond it.
    pub max_in_flight: usize,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self { threads: 0, max_in_flight: 256 }
    }
}

impl PreprocessConfig {
    /// Checks value ranges; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_in_flight == 0 {
            return Err(ConfigError::new("preprocess.max_in_flight", "must be > 0"));
        }
        if self.threads > 1024 {
            return Err(ConfigError::new("preprocess.threads", "must be <= 1024"));
        }
        Ok(())
    }

    /// The number of worker threads to start (`threads`, or the number of cores when 0).
    pub fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_match_the_interface() {
        let fetch = FetchConfig::default();
        fetch.validate().expect("default fetch config is valid");
        assert!(!fetch.allow_private_networks);
        assert_eq!(fetch.max_image_bytes, 20_000_000);
        assert_eq!(fetch.timeout(), Duration::from_secs(10));
        ImageConfig::default().validate().expect("default image config is valid");
        assert_eq!(ImageConfig::default().region_count(), 66);
        assert_eq!(ImageConfig::default().feature_dim(), 768);
        TextConfig::default().validate().expect("default text config is valid");
        PreprocessConfig::default().validate().expect("default preprocess config is valid");
    }

    #[test]
    fn errors_name_the_key() {
        let fetch = FetchConfig { max_image_bytes: 0, ..FetchConfig::default() };
        assert_eq!(
            fetch.validate().expect_err("zero bytes").to_string(),
            "fetch.max_image_bytes must be > 0"
        );
        let image = ImageConfig { crop_size: 0, ..ImageConfig::default() };
        assert!(image.validate().expect_err("zero crop").to_string().starts_with("image.crop_size"));
        let image = ImageConfig { box_scales: vec![1, 20], ..ImageConfig::default() };
        assert!(image.validate().expect_err("too many").to_string().starts_with("image.box_scales"));
        let image = ImageConfig { salient_boxes: 65, ..ImageConfig::default() };
        assert!(image.validate().expect_err("too many").to_string().starts_with("image.salient_boxes"));
        // 66 pyramid boxes + 35 salient boxes > 100 objects; 34 fit.
        let image = ImageConfig { salient_boxes: 35, ..ImageConfig::default() };
        let err = image.validate().expect_err("over max_objects").to_string();
        assert!(err.starts_with("image.box_scales") && err.contains("image.salient_boxes = 35"), "{err}");
        ImageConfig { salient_boxes: 34, ..ImageConfig::default() }.validate().expect("fits");
        let text = TextConfig { max_length: 2, ..TextConfig::default() };
        assert!(text.validate().expect_err("short").to_string().starts_with("text.max_length"));
        let fetch = FetchConfig { timeout_seconds: f64::NAN, ..FetchConfig::default() };
        assert!(fetch.validate().expect_err("nan").to_string().starts_with("fetch.timeout_seconds"));
    }

    #[test]
    fn toml_fills_defaults_and_rejects_unknown_keys() {
        let fetch: FetchConfig =
            toml::from_str("allow_private_networks = true\ntimeout_seconds = 3").expect("parses");
        assert!(fetch.allow_private_networks);
        assert_eq!(fetch.timeout(), Duration::from_secs(3));
        assert_eq!(fetch.max_redirects, FetchConfig::default().max_redirects);
        let err = toml::from_str::<FetchConfig>("max_image_byte = 3").expect_err("unknown key");
        assert!(err.to_string().contains("max_image_byte"), "{err}");
        let image: ImageConfig = toml::from_str("box_scales = [1, 2]").expect("parses");
        assert_eq!(image.region_count(), 5);
    }
}
