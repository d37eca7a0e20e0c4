//! Serving from the running daemon (`[serve] listen`): `POST /v1/embed`, `/v1/caption` and
//! `/v1/generate` on their own address, answered from a snapshot of the weights.
//!
//! - Snapshots: the trainer thread hands over [`Trainer::inference`] every
//!   `serve.refresh_steps` steps (and once at start), between two steps; the copy shares the
//!   parameter tensors, so training pauses only for that hand-over, never for a request.
//!   Every response names the step its snapshot was taken at.
//! - Inference runs on the blocking pool under a semaphore of `serve.threads` permits; at
//!   most `serve.queue` more requests wait, the rest get 503 at once; a request not answered
//!   within `serve.timeout_seconds` gets 503. Bodies above `serve.max_body_bytes` get 413.
//! - Images (`image_base64` or `image_url`) go through ingest's preprocessing, so URLs use the
//!   same fetcher and address guard as the stream.
//! - Bad input gets a 4xx with `{"error": "<one line>"}`; ViLBERT (no generation head, no
//!   contrastive space) answers 501 on every route.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use parking_lot::RwLock;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use unimod_ingest::preprocess::{Outcome, Preprocessor};
use unimod_ingest::record::{RawRecord, RecordKind, SourcePos};
use unimod_ingest::text::TextTokenizer;
use unimod_model::{DecodeOptions, Generated, Inference, ModelError, Trainer, VisualInput};

use crate::config::ServeConfig;
use crate::train::examples::visual_input;

/// `unimod_serve_requests_total{route, code}`.
pub const SERVE_REQUESTS_TOTAL: &str = "unimod_serve_requests_total";
/// `unimod_serve_seconds{route}`.
pub const SERVE_SECONDS: &str = "unimod_serve_seconds";
/// `unimod_serve_snapshot_step`.
pub const SERVE_SNAPSHOT_STEP: &str = "unimod_serve_snapshot_step";

/// What serving needs from a model snapshot, whatever its backend.
pub trait ServeModel: Send + Sync {
    /// The step the weights were taken at.
    fn step(&self) -> u64;
    /// Text vector in the contrastive space (`None`: unusable text).
    fn embed_text(&self, ids: &[u32]) -> Result<Option<Vec<f32>>, ModelError>;
    /// Image vector in the contrastive space (`None`: unusable image).
    fn embed_image(&self, image: &VisualInput) -> Result<Option<Vec<f32>>, ModelError>;
    /// Caption of an image.
    fn caption(&self, image: &VisualInput, opts: &DecodeOptions) -> Result<Generated, ModelError>;
    /// Continuation of a prompt.
    fn continue_text(&self, prompt: &[u32], opts: &DecodeOptions) -> Result<Generated, ModelError>;
}

impl<B: Backend> ServeModel for Inference<B>
where
    Inference<B>: Send + Sync,
{
    fn step(&self) -> u64 {
        Inference::step(self)
    }
    fn embed_text(&self, ids: &[u32]) -> Result<Option<Vec<f32>>, ModelError> {
        Ok(self.embed_texts(&[ids.to_vec()])?.pop().flatten())
    }
    fn embed_image(&self, image: &VisualInput) -> Result<Option<Vec<f32>>, ModelError> {
        Ok(self.embed_images(std::slice::from_ref(image))?.pop().flatten())
    }
    fn caption(&self, image: &VisualInput, opts: &DecodeOptions) -> Result<Generated, ModelError> {
        Inference::caption(self, image, opts)
    }
    fn continue_text(&self, prompt: &[u32], opts: &DecodeOptions) -> Result<Generated, ModelError> {
        Inference::continue_text(self, prompt, opts)
    }
}

/// A published snapshot with the tools to read requests for it.
pub struct Served {
    /// The weights.
    pub model: Arc<dyn ServeModel>,
    /// The lineage's tokenizer.
    pub tokenizer: Arc<TextTokenizer>,
    /// Image decoding (and URL fetching through the guard).
    pub preprocessor: Preprocessor,
}

/// The newest snapshot, shared by the trainer thread (writer) and the routes (readers).
#[derive(Clone, Default)]
pub struct SnapshotSlot(Arc<RwLock<Option<Arc<Served>>>>);

impl SnapshotSlot {
    /// Replaces the snapshot.
    pub fn publish(&self, served: Served) {
        *self.0.write() = Some(Arc::new(served));
    }

    /// The current snapshot, if any.
    pub fn current(&self) -> Option<Arc<Served>> {
        self.0.read().clone()
    }
}

/// Called by the trainer thread between steps with the step count.
pub type StepHook<B> = Box<dyn FnMut(u64, &Trainer<B>) + Send>;

/// The trainer-thread hook that publishes a snapshot (and sets the snapshot-step gauge).
pub fn snapshot_hook<B: AutodiffBackend>(
    slot: SnapshotSlot,
    tokenizer: Arc<TextTokenizer>,
    preprocessor: Preprocessor,
    metrics: ServeMetrics,
) -> StepHook<B>
where
    Inference<B::InnerBackend>: Send + Sync,
{
    Box::new(move |step, trainer| {
        let started = Instant::now();
        let model: Arc<dyn ServeModel> = Arc::new(trainer.inference(step));
        slot.publish(Served { model, tokenizer: Arc::clone(&tokenizer), preprocessor: preprocessor.clone() });
        metrics.snapshot_step.set(step as i64);
        tracing::debug!(step, us = started.elapsed().as_micros() as u64, "serving snapshot taken");
    })
}

/// The serving metrics.
#[derive(Clone)]
pub struct ServeMetrics {
    /// Requests by route and status code.
    pub requests: IntCounterVec,
    /// Request latency by route.
    pub seconds: HistogramVec,
    /// Step of the snapshot being served.
    pub snapshot_step: IntGauge,
}

impl ServeMetrics {
    /// Registers the serving metrics on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(SERVE_REQUESTS_TOTAL, "Serving requests by route and HTTP status code."),
            &["route", "code"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(SERVE_SECONDS, "Serving request latency (waiting included).")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["route"],
        )?;
        let snapshot_step = IntGauge::new(SERVE_SNAPSHOT_STEP, "Training step of the weights being served.")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(snapshot_step.clone()))?;
        Ok(Self { requests, seconds, snapshot_step })
    }
}

/// Turns an image request field into the model's input through ingest's preprocessing:
/// `payload` is a record value of an image record (raw bytes or `{"image_url"}` /
/// `{"image_base64"}` JSON). The error is one line.
pub async fn preprocess_image(preprocessor: &Preprocessor, payload: Vec<u8>, source: &str) -> Result<VisualInput, String> {
    let raw = RawRecord {
        kind: RecordKind::Image,
        pos: SourcePos::new(Arc::from(source), 0, 0),
        key: None,
        payload: Some(payload),
        received_at: Instant::now(),
    };
    match preprocessor.process(raw).await.outcome {
        Outcome::Ready(sample) => sample.image.as_ref().map(visual_input).ok_or_else(|| "no image in the record".to_string()),
        Outcome::Rejected(r) => Err(r.to_string()),
    }
}

/// An error answer: status and one line.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
    fn status(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Unsupported(m) => Self::status(StatusCode::NOT_IMPLEMENTED, m),
            ModelError::Input(m) => Self::status(StatusCode::UNPROCESSABLE_ENTITY, m),
            other => Self::status(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Clone)]
struct ServeState {
    slot: SnapshotSlot,
    metrics: ServeMetrics,
    config: ServeConfig,
    permits: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
}

/// Counts a request as admitted (running or waiting) until dropped.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ServeState {
    /// Runs `f` on the blocking pool under the concurrency bound.
    async fn compute<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let limit = self.config.threads + self.config.queue;
        if self.admitted.fetch_add(1, Ordering::SeqCst) >= limit {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "busy: too many requests waiting; retry later"));
        }
        let _admitted = Admitted(Arc::clone(&self.admitted));
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, format!("inference failed: {e}")))
    }

    fn snapshot(&self) -> Result<Arc<Served>, ApiError> {
        self.slot
            .current()
            .ok_or_else(|| ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "no model snapshot yet; retry shortly"))
    }

    fn decode_options(&self, beam: Option<usize>, max_len: Option<usize>) -> Result<DecodeOptions, ApiError> {
        let beam = beam.unwrap_or(self.config.beam);
        let max_len = max_len.unwrap_or(self.config.max_len);
        if !(1..=16).contains(&beam) {
            return Err(ApiError::bad(format!("beam must be between 1 and 16 (got {beam})")));
        }
        if !(1..=512).contains(&max_len) {
            return Err(ApiError::bad(format!("max_len must be between 1 and 512 (got {max_len})")));
        }
        Ok(DecodeOptions { beam, max_len, ..DecodeOptions::default() })
    }

    /// Reads the body (bounded), runs `work`, answers and counts.
    async fn respond<F, Fut>(&self, route: &'static str, body: Body, work: F) -> Response
    where
        F: FnOnce(Self, axum::body::Bytes) -> Fut,
        Fut: Future<Output = Result<Value, ApiError>>,
    {
        let started = Instant::now();
        let timeout = Duration::from_secs(self.config.timeout_seconds);
        let state = self.clone();
        let limit = self.config.max_body_bytes;
        let result = tokio::time::timeout(timeout, async move {
            let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
                ApiError::status(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than serve.max_body_bytes = {limit}"))
            })?;
            work(state, bytes).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::status(StatusCode::SERVICE_UNAVAILABLE, format!("timed out after serve.timeout_seconds = {}", timeout.as_secs())))
        });
        let response = match result {
            Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
            Err(e) => (e.status, axum::Json(json!({ "error": one_line(&e.message) }))).into_response(),
        };
        let code = response.status().as_u16().to_string();
        self.metrics.requests.with_label_values(&[route, code.as_str()]).inc();
        self.metrics.seconds.with_label_values(&[route]).observe(started.elapsed().as_secs_f64());
        response
    }
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("invalid request JSON: {e}")))
}

/// The image of a request: exactly one of `image_base64` and `image_url`.
async fn request_image(served: &Served, base64: Option<String>, url: Option<String>) -> Result<VisualInput, ApiError> {
    let payload = match (base64, url) {
        (Some(b), None) => json!({ "image_base64": b }),
        (None, Some(u)) => json!({ "image_url": u }),
        (Some(_), Some(_)) => return Err(ApiError::bad("send one of image_base64 and image_url, not both")),
        (None, None) => return Err(ApiError::bad("missing image_base64 or image_url")),
    };
    preprocess_image(&served.preprocessor, payload.to_string().into_bytes(), "serve")
        .await
        .map_err(|e| ApiError::bad(format!("image: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRequest {
    text: Option<String>,
    image_base64: Option<String>,
    image_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptionRequest {
    image_base64: Option<String>,
    image_url: Option<String>,
    beam: Option<usize>,
    max_len: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateRequest {
    prompt: String,
    beam: Option<usize>,
    max_len: Option<usize>,
}

fn decoded(tokenizer: &TextTokenizer, ids: &[u32]) -> Result<String, ApiError> {
    tokenizer
        .decode(ids)
        .map(|t| t.trim().to_string())
        .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn embed(State(s): State<ServeState>, body: Body) -> Response {
    s.clone()
        .respond("embed", body, |s, bytes| async move {
            let req: EmbedRequest = parse(&bytes)?;
            let served = s.snapshot()?;
            let step = served.model.step();
            let (input, vector) = match (req.text, req.image_base64, req.image_url) {
                (Some(text), None, None) => {
                    if text.trim().is_empty() {
                        return Err(ApiError::bad("text is empty"));
                    }
                    let ids = served.tokenizer.encode(&text).map_err(|e| ApiError::bad(format!("text: {e}")))?.ids;
                    let model = Arc::clone(&served.model);
                    ("text", s.compute(move || model.embed_text(&ids)).await??)
                }
                (None, b, u) if b.is_some() || u.is_some() => {
                    let image = request_image(&served, b, u).await?;
                    let model = Arc::clone(&served.model);
                    ("image", s.compute(move || model.embed_image(&image)).await??)
                }
                (None, None, None) => return Err(ApiError::bad("send one of text, image_base64, image_url")),
                _ => return Err(ApiError::bad("send one of text, image_base64, image_url, not several")),
            };
            let vector = vector.ok_or_else(|| ApiError::status(StatusCode::UNPROCESSABLE_ENTITY, "the model cannot use this input"))?;
            Ok(json!({ "input": input, "dim": vector.len(), "vector": vector, "step": step }))
        })
        .await
}

async fn caption(State(s): State<ServeState>, body: Body) -> Response {
    s.clone()
        .respond("caption", body, |s, bytes| async move {
            let req: CaptionRequest = parse(&bytes)?;
            let opts = s.decode_options(req.beam, req.max_len)?;
            let served = s.snapshot()?;
            let image = request_image(&served, req.image_base64, req.image_url).await?;
            let model = Arc::clone(&served.model);
            let out = s.compute(move || model.caption(&image, &opts)).await??;
            Ok(json!({ "caption": decoded(&served.tokenizer, &out.ids)?, "step": served.model.step() }))
        })
        .await
}

async fn generate(State(s): State<ServeState>, body: Body) -> Response {
    s.clone()
        .respond("generate", body, |s, bytes| async move {
            let req: GenerateRequest = parse(&bytes)?;
            let opts = s.decode_options(req.beam, req.max_len)?;
            if req.prompt.trim().is_empty() {
                return Err(ApiError::bad("prompt is empty"));
            }
            let served = s.snapshot()?;
            let ids = served.tokenizer.encode(&req.prompt).map_err(|e| ApiError::bad(format!("prompt: {e}")))?.ids;
            let model = Arc::clone(&served.model);
            let out = s.compute(move || model.continue_text(&ids, &opts)).await??;
            Ok(json!({ "prompt": req.prompt, "text": decoded(&served.tokenizer, &out.ids)?, "step": served.model.step() }))
        })
        .await
}

/// Binds `addr` and serves the inference routes until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    slot: SnapshotSlot,
    metrics: ServeMetrics,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (listener, local) = crate::listen::bind(addr, "serve.listen").await?;
    let state = ServeState {
        slot,
        metrics,
        permits: Arc::new(Semaphore::new(config.threads)),
        admitted: Arc::new(AtomicUsize::new(0)),
        config,
    };
    let app = Router::new()
        .route("/v1/embed", post(embed))
        .route("/v1/caption", post(caption))
        .route("/v1/generate", post(generate))
        .with_state(state);
    let handle = crate::listen::spawn(listener, app, shutdown, "serve");
    Ok((local, handle))
}
