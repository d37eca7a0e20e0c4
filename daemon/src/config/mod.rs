//! The daemon's configuration: one TOML file shared by `run`, `eval` and `checkpoint`, with
//! `UNIMOD_<SECTION>__<KEY>` environment overrides. Unknown keys are errors; every field has
//! a default (documented in `ops/unimod.example.toml`) except `kafka.brokers`.
//!
//! The `///` comments on the fields below are the configuration reference.

mod env;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use unimod_ingest::config::{FetchConfig, ImageConfig, PreprocessConfig, TextConfig};
use unimod_ingest::kafka::KafkaConfig;
use unimod_model::{Arch, ObjectiveWeights};

/// A configuration error: always names the file and, when known, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type, or a key is unknown.
    #[error("{path}: {key}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The dotted key, or `(file)` when the problem is not tied to one key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An environment override could not be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, starting with the dotted key.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka connection, topics, consumer group, dead-letter topic.
    pub kafka: KafkaConfig,
    /// The sled checkpoint store.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Model architecture and size.
    #[serde(default)]
    pub model: ModelSection,
    /// Training loop: batches, learning rate, replay, device.
    #[serde(default)]
    pub train: TrainConfig,
    /// Image URL fetching.
    #[serde(default)]
    pub fetch: FetchConfig,
    /// Image decoding and the built-in object sequence.
    #[serde(default)]
    pub image: ImageConfig,
    /// Tokenizer and text limits.
    #[serde(default)]
    pub text: TextConfig,
    /// The CPU pool that decodes images and tokenises texts.
    #[serde(default)]
    pub preprocess: PreprocessConfig,
    /// Cross-modal contrastive learning data: hard negatives and retrieved positives.
    #[serde(default)]
    pub cmcl: CmclConfig,
    /// Prometheus metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Inference routes served from the running daemon (off unless `listen` is set).
    #[serde(default)]
    pub serve: ServeConfig,
}

/// `[serve]`: `POST /v1/embed`, `/v1/caption`, `/v1/generate` from a snapshot of the weights
/// the running daemon trains.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Listen address of the inference routes (its own port, not `metrics.listen`); unset =
    /// no serving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Take a new snapshot of the weights every this many optimizer steps.
    pub refresh_steps: u64,
    /// Requests computed at the same time (each on its own thread).
    pub threads: usize,
    /// Requests allowed to wait for a thread; more are answered 503 at once.
    pub queue: usize,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// A request not answered within this many seconds (waiting included) gets 503.
    pub timeout_seconds: u64,
    /// Beam width of `/v1/caption` and `/v1/generate` when the request gives none.
    pub beam: usize,
    /// Most generated tokens when the request gives no `max_len`.
    pub max_len: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: None,
            refresh_steps: 100,
            threads: 2,
            queue: 16,
            max_body_bytes: 16 << 20,
            timeout_seconds: 30,
            beam: 1,
            max_len: 20,
        }
    }
}

/// `[storage]`: where and how often checkpoints are written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the sled store holding checkpoints.
    pub path: PathBuf,
    /// Write a checkpoint every this many optimizer steps (0 = never by step count).
    pub checkpoint_every_steps: u64,
    /// Write a checkpoint at least every this many seconds (0 = never by time).
    pub checkpoint_every_seconds: u64,
    /// How many of the newest checkpoints to keep (at least 1).
    pub keep_checkpoints: usize,
    /// After this many failed checkpoint writes in a row (disk full, I/O errors) `/readyz`
    /// answers 503; after twice as many the daemon stops with exit status 1 (the newest
    /// durable checkpoint stays valid). 0 = never.
    pub max_failed_checkpoints: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/unimod"),
            checkpoint_every_steps: 500,
            checkpoint_every_seconds: 600,
            keep_checkpoints: 3,
            max_failed_checkpoints: 3,
        }
    }
}

/// `[model]`: architecture and size. Applies only when the store has no checkpoint yet; a
/// resumed run keeps the architecture stored with its checkpoint (a mismatch is an error).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// `"unimo"` or `"vilbert"`.
    pub arch: Arch,
    /// `"tiny"` (2 layers/128 hidden/2 heads), `"small"` (4/256/4), `"base"` (12/768/12),
    /// `"large"` (24/1024/16), or `"custom"` (then `layers`, `hidden`, `heads` are required).
    pub size: String,
    /// Layers for `size = "custom"` (overrides the preset otherwise when set).
    pub layers: Option<usize>,
    /// Hidden width for `size = "custom"`.
    pub hidden: Option<usize>,
    /// Attention heads for `size = "custom"`.
    pub heads: Option<usize>,
    /// Width of a visual feature row. Default: the built-in crops' width
    /// (`3 x image.crop_size^2`); set it to the detector's `dim` when producers send
    /// precomputed regions (records of another width are then rejected).
    pub feature_dim: Option<usize>,
    /// Dropout probability.
    pub dropout: f64,
    /// Pre-LayerNorm blocks (more stable in long continual runs) instead of the papers' post-LN.
    pub pre_ln: bool,
    /// `[model.weights]`: per-objective loss weights; 0 disables an objective; a key left
    /// out takes its architecture's default ([`WeightsSection::resolve`]).
    pub weights: WeightsSection,
    /// Share of text seq2seq examples whose target is a suffix of the text (prefix ->
    /// continuation, what `unimod generate` asks for); the rest use fragment sampling.
    pub continuation: f32,
    /// Start a new lineage from the weights of an exported directory (`checkpoint export`:
    /// `model.safetensors`, `config.json`, `tokenizer.json`). The architecture, dimensions and
    /// tokenizer come from it; `arch` must agree. Used only while the store has no checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Partial initialisation from `init_from`'s `model.safetensors` (for example a
    /// BERT/RoBERTa-style text encoder): source name prefix -> unimod tensor name prefix.
    /// Only the file's tensors under a listed prefix are loaded; the architecture comes from
    /// this section, the tokenizer from `init_from/tokenizer.json` when present.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub init_map: std::collections::BTreeMap<String, String>,
}

/// `[model.weights]` as written: each objective's loss weight, or `None` for the
/// architecture's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightsSection {
    /// Masked language modelling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlm: Option<f32>,
    /// Seq2seq (prefix-LM) generation on text-only records; UNIMO only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq2seq: Option<f32>,
    /// Masked region modelling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mrm: Option<f32>,
    /// Cross-modal contrastive learning; UNIMO only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmcl: Option<f32>,
    /// Image-text matching.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub itm: Option<f32>,
    /// Image-to-text seq2seq (captioning) on pairs; UNIMO only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caption: Option<f32>,
}

impl WeightsSection {
    /// The defaults of `arch`, chosen by measurement (BENCHMARKS.md "Learning", issue 11):
    /// for UNIMO, image-text matching (not part of UNIMO's recipe; MODEL.md objective 5) and
    /// seq2seq on text-only records are off (with them, held-out retrieval recall was no
    /// better at equal steps and a run took about a quarter longer); captioning stays on
    /// (`unimod caption`). For ViLBERT, ITM is its alignment objective and stays on (ViLBERT
    /// ignores the weights of CMCL, seq2seq and captioning).
    pub fn defaults_for(arch: Arch) -> ObjectiveWeights {
        match arch {
            Arch::Unimo => ObjectiveWeights { itm: 0.0, seq2seq: 0.0, ..ObjectiveWeights::default() },
            Arch::Vilbert => ObjectiveWeights::default(),
        }
    }

    /// The weights for `arch`: each key given, else the architecture's default.
    pub fn resolve(&self, arch: Arch) -> ObjectiveWeights {
        let d = Self::defaults_for(arch);
        ObjectiveWeights {
            mlm: self.mlm.unwrap_or(d.mlm),
            seq2seq: self.seq2seq.unwrap_or(d.seq2seq),
            mrm: self.mrm.unwrap_or(d.mrm),
            cmcl: self.cmcl.unwrap_or(d.cmcl),
            itm: self.itm.unwrap_or(d.itm),
            caption: self.caption.unwrap_or(d.caption),
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            arch: Arch::Unimo,
            size: "tiny".into(),
            layers: None,
            hidden: None,
            heads: None,
            feature_dim: None,
            dropout: 0.1,
            pre_ln: true,
            weights: WeightsSection::default(),
            continuation: 0.5,
            init_from: None,
            init_map: std::collections::BTreeMap::new(),
        }
    }
}

/// `[train]`: the endless training loop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Samples per optimizer step (fresh + replay), split over `grad_accumulation` micro-batches.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub grad_accumulation: usize,
    /// Peak learning rate (AdamW).
    pub learning_rate: f64,
    /// Linear warmup steps from 0 to `learning_rate` at the start of the lineage.
    pub warmup_steps: u64,
    /// After a resume, warm up again over this many steps (0 = no rewarm).
    pub rewarm_steps: u64,
    /// Decoupled weight decay (not applied to LayerNorm and biases).
    pub weight_decay: f32,
    /// Global gradient-norm clip.
    pub max_grad_norm: f32,
    /// `"cpu"`, `"cuda"`, `"cuda:N"`, `"wgpu"` or `"wgpu:N"` (the GPU backends need a build
    /// with the `cuda` / `wgpu` feature).
    pub device: String,
    /// CPU threads of the ndarray backend (0 = every core): rayon's pool and matrixmultiply's
    /// (`MATMUL_NUM_THREADS` in the environment wins for the latter; it uses at most 4).
    pub threads: usize,
    /// Target share of each record kind in a batch; kinds with nothing queued are skipped, so
    /// a missing stream never stalls training.
    pub mix: MixConfig,
    /// Share of each batch drawn from the replay buffers (0 disables replay).
    pub replay_ratio: f64,
    /// Reservoir size per kind of the replay buffer.
    pub replay_capacity: usize,
    /// Start a step with a partial batch when no new record arrived for this many milliseconds.
    pub max_batch_wait_ms: u64,
    /// Text lengths are padded up to the smallest of these (bounded shapes for the GPU).
    pub text_buckets: Vec<usize>,
    /// Object counts are padded up to the smallest of these.
    pub object_buckets: Vec<usize>,
    /// Roll back to the last checkpoint after this many non-finite steps in a row.
    pub max_nonfinite_in_row: u32,
    /// Seed for masking, mixing and rewriting.
    pub seed: u64,
    /// Capacity (records) of the queue between preprocessing and the trainer thread.
    pub queue_capacity: usize,
    /// Steps of the cooldown that `unimod checkpoint export --cooldown` runs on a copy of the
    /// weights (learning rate annealed linearly to 0, batches from the checkpoint's replay
    /// buffers); the lineage itself never cools down.
    pub cooldown_steps: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 32,
            grad_accumulation: 1,
            learning_rate: 1e-4,
            warmup_steps: 1000,
            rewarm_steps: 0,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            device: "cpu".into(),
            threads: 0,
            mix: MixConfig::default(),
            replay_ratio: 0.05,
            replay_capacity: 256,
            max_batch_wait_ms: 500,
            text_buckets: vec![16, 32, 64, 128],
            object_buckets: vec![16, 40, 73, 101],
            max_nonfinite_in_row: 5,
            seed: 42,
            queue_capacity: 1024,
            cooldown_steps: 200,
        }
    }
}

/// `[train.mix]`: relative weights of the record kinds in a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MixConfig {
    /// Text-only records.
    pub text: f64,
    /// Image-only records.
    pub image: f64,
    /// Image-caption pairs.
    pub pair: f64,
}

impl Default for MixConfig {
    fn default() -> Self {
        Self { text: 1.0, image: 1.0, pair: 2.0 }
    }
}

/// `[cmcl]`: the data side of cross-modal contrastive learning (UNIMO only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CmclConfig {
    /// Hard-negative captions made by rewriting each pair's caption (one object, attribute,
    /// number or relation word replaced by one of a different meaning).
    pub hard_negatives: usize,
    /// Hard-negative captions per pair taken from other images' captions close by TF-IDF
    /// (from the window of recent pair captions; never a caption of the same image).
    pub tfidf_negatives: usize,
    /// Recent text-only records, image-only records and pair captions kept for retrieval.
    pub window: usize,
    /// Extra text positives retrieved per pair (TF-IDF over the text window).
    pub text_positives: usize,
    /// Extra image positives retrieved per pair (pooled-embedding similarity over the window).
    pub image_positives: usize,
    /// Minimum TF-IDF cosine between a caption and a text-only record for the record to be a
    /// positive (docs/configuration.md says how it was chosen).
    pub text_min_similarity: f32,
    /// Minimum cosine between the pooled embeddings of a pair's image and an image-only record
    /// for the record to be a positive (docs/configuration.md says how it was chosen).
    pub image_min_similarity: f32,
    /// No longer used (accepted so that older config files still load; `run` warns when it
    /// is set): the image window's embeddings now come from the training steps themselves,
    /// and a retrieved entry is re-embedded by the step that retrieves it.
    pub image_refresh_steps: Option<u64>,
}

impl Default for CmclConfig {
    fn default() -> Self {
        Self {
            hard_negatives: 1,
            tfidf_negatives: 1,
            window: 512,
            text_positives: 1,
            image_positives: 1,
            text_min_similarity: 0.95,
            image_min_similarity: 0.9,
            image_refresh_steps: None,
        }
    }
}

/// `[metrics]`: the HTTP endpoint for `/metrics`, `/healthz`, `/readyz` and checkpoint reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9464)) }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise (for example under journald).
    Auto,
    /// Always human-readable.
    Human,
    /// Always one JSON object per line.
    Json,
}

/// `[log]`: logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto`, `human` or `json`.
    pub format: LogFormat,
    /// Filter in `tracing_subscriber::EnvFilter` syntax (`RUST_LOG` overrides it).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Auto, level: "info".into() }
    }
}

/// `[shutdown]`: draining on SIGTERM/SIGINT.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Budget in seconds for the whole drain (stop consuming, finish the step, final
    /// checkpoint, offset commit). Keep systemd's `TimeoutStopSec` above it.
    pub drain_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_seconds: 60 }
    }
}

impl Config {
    /// Reads, overrides from the environment, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml_str(&text, path, std::env::vars())
    }

    /// Parses `text` (as if read from `path`) with the given environment.
    pub fn from_toml_str(
        text: &str,
        path: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            key: "(file)".into(),
            message: one_line(&e.to_string()),
        })?;
        env::apply_overrides(&mut value, vars)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::Parse {
                    path: path.to_owned(),
                    key: if key == "." || key.is_empty() { "(file)".into() } else { key },
                    message: one_line(&e.into_inner().to_string()),
                }
            })?;
        config.validate().map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        Ok(config)
    }

    /// Checks values that parse but make no sense; the message starts with the dotted key.
    pub fn validate(&self) -> Result<(), String> {
        self.kafka.validate().map_err(|e| e.to_string())?;
        self.fetch.validate().map_err(|e| e.to_string())?;
        self.image.validate().map_err(|e| e.to_string())?;
        self.text.validate().map_err(|e| e.to_string())?;
        self.preprocess.validate().map_err(|e| e.to_string())?;
        let s = &self.storage;
        if s.keep_checkpoints == 0 {
            return Err("storage.keep_checkpoints must be at least 1".into());
        }
        if s.path.as_os_str().is_empty() {
            return Err("storage.path must not be empty".into());
        }
        let m = &self.model;
        match m.size.as_str() {
            "tiny" | "small" | "base" | "large" => {}
            "custom" => {
                for (k, v) in [("layers", m.layers), ("hidden", m.hidden), ("heads", m.heads)] {
                    if v.unwrap_or(0) == 0 {
                        return Err(format!("model.{k} must be set (> 0) when model.size = \"custom\""));
                    }
                }
            }
            other => {
                return Err(format!(
                    "model.size must be one of tiny, small, base, large, custom (got {other:?})"
                ))
            }
        }
        if let (Some(h), Some(n)) = (m.hidden, m.heads) {
            if n == 0 || h % n != 0 {
                return Err(format!("model.hidden ({h}) must be a multiple of model.heads ({n})"));
            }
        }
        if m.feature_dim == Some(0) {
            return Err("model.feature_dim must be > 0".into());
        }
        if !(0.0..1.0).contains(&m.dropout) {
            return Err(format!("model.dropout must be in [0, 1) (got {})", m.dropout));
        }
        if !m.init_map.is_empty() && m.init_from.is_none() {
            return Err("model.init_map needs model.init_from (the directory holding model.safetensors)".into());
        }
        if m.init_from.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err("model.init_from must not be empty".into());
        }
        let w = m.weights.resolve(m.arch);
        for (k, v) in
            [("mlm", w.mlm), ("seq2seq", w.seq2seq), ("mrm", w.mrm), ("cmcl", w.cmcl), ("itm", w.itm), ("caption", w.caption)]
        {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("model.weights.{k} must be a finite number >= 0 (got {v})"));
            }
        }
        if !(0.0..=1.0).contains(&m.continuation) {
            return Err(format!("model.continuation must be in [0, 1] (got {})", m.continuation));
        }
        let sv = &self.serve;
        if sv.refresh_steps == 0 {
            return Err("serve.refresh_steps must be at least 1".into());
        }
        if sv.threads == 0 || sv.threads > 256 {
            return Err("serve.threads must be between 1 and 256".into());
        }
        if sv.max_body_bytes < 1024 {
            return Err("serve.max_body_bytes must be at least 1024".into());
        }
        if sv.timeout_seconds == 0 {
            return Err("serve.timeout_seconds must be at least 1".into());
        }
        if sv.beam == 0 || sv.beam > 16 {
            return Err("serve.beam must be between 1 and 16".into());
        }
        if sv.max_len == 0 || sv.max_len > 512 {
            return Err("serve.max_len must be between 1 and 512".into());
        }
        if sv.listen.is_some() && sv.listen == Some(self.metrics.listen) {
            return Err("serve.listen must differ from metrics.listen".into());
        }
        let t = &self.train;
        if t.batch_size == 0 {
            return Err("train.batch_size must be at least 1".into());
        }
        if t.grad_accumulation == 0 || t.grad_accumulation > t.batch_size {
            return Err(format!(
                "train.grad_accumulation must be between 1 and train.batch_size ({})",
                t.batch_size
            ));
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return Err(format!("train.learning_rate must be > 0 (got {})", t.learning_rate));
        }
        if !(t.max_grad_norm.is_finite() && t.max_grad_norm > 0.0) {
            return Err("train.max_grad_norm must be > 0".into());
        }
        if t.threads > 1024 {
            return Err(format!("train.threads must be at most 1024 (0 = every core; got {})", t.threads));
        }
        if !(0.0..=1.0).contains(&t.replay_ratio) {
            return Err(format!("train.replay_ratio must be in [0, 1] (got {})", t.replay_ratio));
        }
        if t.replay_ratio > 0.0 && t.replay_capacity == 0 {
            return Err("train.replay_capacity must be > 0 when train.replay_ratio > 0".into());
        }
        let device = parse_device(&t.device).map_err(|e| format!("train.device: {e}"))?;
        if !device.compiled() {
            return Err(format!(
                "train.device = {:?} needs a unimod built with `--features {}` (this build has: {})",
                t.device,
                device.feature().unwrap_or("?"),
                unimod_model::backend::compiled_backends().join(", ")
            ));
        }
        for (k, v) in [("text", t.mix.text), ("image", t.mix.image), ("pair", t.mix.pair)] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("train.mix.{k} must be >= 0 (got {v})"));
            }
        }
        if t.mix.text + t.mix.image + t.mix.pair <= 0.0 {
            return Err("train.mix: at least one weight must be > 0".into());
        }
        for (k, b) in [("text_buckets", &t.text_buckets), ("object_buckets", &t.object_buckets)] {
            if b.is_empty() || b.windows(2).any(|w| w[0] >= w[1]) || b[0] == 0 {
                return Err(format!("train.{k} must be a non-empty, strictly increasing list of sizes > 0"));
            }
        }
        if t.queue_capacity < t.batch_size {
            return Err(format!("train.queue_capacity must be >= train.batch_size ({})", t.batch_size));
        }
        if t.max_nonfinite_in_row == 0 {
            return Err("train.max_nonfinite_in_row must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.cmcl.text_min_similarity) {
            return Err("cmcl.text_min_similarity must be in [0, 1] (a TF-IDF cosine)".into());
        }
        if !(-1.0..=1.0).contains(&self.cmcl.image_min_similarity) {
            return Err("cmcl.image_min_similarity must be in [-1, 1] (a cosine)".into());
        }
        if self.shutdown.drain_seconds == 0 {
            return Err("shutdown.drain_seconds must be at least 1".into());
        }
        Ok(())
    }

    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Which device `train.device` names (`cpu`, `cuda[:N]`, `wgpu[:N]`).
pub type DeviceChoice = unimod_model::backend::Device;

/// Parses `cpu`, `cuda`, `cuda:N`, `wgpu` or `wgpu:N`.
pub fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    DeviceChoice::parse(s)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
