//! The HTTP endpoint on `metrics.listen`: `/metrics` (Prometheus text format), `/healthz`
//! (200 while the process is alive), `/readyz` (200 only while consuming and training), and
//! read-only checkpoint access for `unimod eval` and `unimod checkpoint` while `run` holds
//! the sled store (sled allows one process per database):
//!
//! - `GET /v1/checkpoints` — JSON array of checkpoint metadata, newest first;
//! - `GET /v1/checkpoints/{id}` — one checkpoint's metadata (`latest` allowed); `latest` is
//!   resolved without reading blobs (the store remembers which checkpoints verify);
//! - `GET /v1/checkpoints/{id}/blobs/{name}` — one verified blob's bytes, streamed chunk by
//!   chunk (a damaged chunk aborts the response, which then falls short of its
//!   `Content-Length`). Blobs hold training data (the replay buffer keeps raw texts and image
//!   features), so they are served only with `Authorization: Bearer <token>`, the token the
//!   daemon writes at start to the file [`crate::access::TOKEN_FILE`] in `storage.path`
//!   (mode 0600): only users who can read the store can read its blobs over HTTP.
//!
//! At most [`MAX_V1_REQUESTS`] `/v1` requests run at once (more get 503); each has
//! [`REQUEST_TIMEOUT`] to produce its answer, and a blob stream whose client stops reading
//! for that long is closed.

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// Most `/v1` requests served at once.
pub const MAX_V1_REQUESTS: usize = 4;
/// Time a `/v1` request has to produce its answer (and a blob client to take each chunk).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A blob being read chunk by chunk.
pub struct BlobStream {
    /// Its length in bytes.
    pub len: u64,
    /// Verified chunks, in order; an error ends the stream.
    pub chunks: Box<dyn Iterator<Item = anyhow::Result<Vec<u8>>> + Send>,
}

/// Read access to checkpoints, served to other processes.
pub trait CheckpointSource: Send + Sync + 'static {
    /// All checkpoints' metadata, newest first.
    fn list_json(&self) -> anyhow::Result<serde_json::Value>;
    /// One checkpoint's metadata (`id` may be `latest`).
    fn meta_json(&self, id: &str) -> anyhow::Result<Option<serde_json::Value>>;
    /// One blob of a checkpoint, verified while it is read.
    fn blob_stream(&self, id: &str, name: &str) -> anyhow::Result<Option<BlobStream>>;
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    health: Arc<Health>,
    checkpoints: Option<Arc<dyn CheckpointSource>>,
    /// Bearer token required for blobs (`None`: blobs are not served).
    token: Option<Arc<String>>,
    v1: Arc<Semaphore>,
}

/// Binds `addr` and serves until `shutdown` is cancelled. Binding errors are returned at
/// once so a port conflict stops the start with a clear message.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Arc<Health>,
    checkpoints: Option<Arc<dyn CheckpointSource>>,
    blob_token: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (listener, local) = crate::listen::bind(addr, "metrics.listen").await?;
    let state = AppState {
        registry,
        health,
        checkpoints,
        token: blob_token.map(Arc::new),
        v1: Arc::new(Semaphore::new(MAX_V1_REQUESTS)),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/checkpoints", get(list_checkpoints))
        .route("/v1/checkpoints/{id}", get(show_checkpoint))
        .route("/v1/checkpoints/{id}/blobs/{name}", get(checkpoint_blob))
        .with_state(state);
    let handle = crate::listen::spawn(listener, app, shutdown, "metrics");
    Ok((local, handle))
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&s.registry.gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, TextEncoder::new().format_type().to_owned())], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    match s.health.not_ready_reason() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

fn unavailable() -> Response {
    (StatusCode::NOT_FOUND, "checkpoint access is not served by this process\n").into_response()
}

fn internal(e: anyhow::Error) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response()
}

fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        format!("too many checkpoint requests at once (at most {MAX_V1_REQUESTS}); retry\n"),
    )
        .into_response()
}

fn timed_out() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "the checkpoint request took too long\n").into_response()
}

/// A `/v1` slot, or the 503 to answer.
fn slot(s: &AppState) -> Result<OwnedSemaphorePermit, Response> {
    Arc::clone(&s.v1).try_acquire_owned().map_err(|_| busy())
}

/// Runs a metadata lookup on the blocking pool within [`REQUEST_TIMEOUT`].
async fn metadata<T: Send + 'static>(
    s: &AppState,
    job: impl FnOnce(&dyn CheckpointSource) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Response> {
    let Some(src) = s.checkpoints.clone() else { return Err(unavailable()) };
    let permit = slot(s)?;
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        job(src.as_ref())
    });
    match tokio::time::timeout(REQUEST_TIMEOUT, task).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(internal(e)),
        Ok(Err(e)) => Err(internal(e.into())),
        Err(_) => Err(timed_out()),
    }
}

async fn list_checkpoints(State(s): State<AppState>) -> Response {
    match metadata(&s, |src| src.list_json()).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
}

async fn show_checkpoint(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match metadata(&s, move |src| src.meta_json(&id)).await {
        Ok(Some(v)) => axum::Json(v).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such checkpoint\n").into_response(),
        Err(r) => r,
    }
}

/// Whether `headers` carry the blob token (compared in constant time).
fn authorized(expected: &str, headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn checkpoint_blob(State(s): State<AppState>, headers: HeaderMap, Path((id, name)): Path<(String, String)>) -> Response {
    let Some(token) = s.token.clone() else { return unavailable() };
    if !authorized(&token, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            format!(
                "checkpoint data needs `Authorization: Bearer <token>`, the token in {} inside the daemon's storage.path\n",
                crate::access::TOKEN_FILE
            ),
        )
            .into_response();
    }
    let Some(src) = s.checkpoints.clone() else { return unavailable() };
    let permit = match slot(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let opened = tokio::task::spawn_blocking(move || src.blob_stream(&id, &name).map(|b| (b, permit)));
    let (stream, permit) = match tokio::time::timeout(REQUEST_TIMEOUT, opened).await {
        Ok(Ok(Ok((Some(stream), permit)))) => (stream, permit),
        Ok(Ok(Ok((None, _)))) => return (StatusCode::NOT_FOUND, "no such checkpoint or blob\n").into_response(),
        Ok(Ok(Err(e))) => return internal(e),
        Ok(Err(e)) => return internal(e.into()),
        Err(_) => return timed_out(),
    };
    let len = stream.len;
    // One chunk ahead: memory per response stays at about two chunks.
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        for part in stream.chunks {
            let failed = part.is_err();
            let item = part.map(Bytes::from).map_err(|e| {
                tracing::warn!(error = %format!("{e:#}"), "blob stream aborted");
                std::io::Error::other(format!("{e:#}"))
            });
            // A client that stops reading for REQUEST_TIMEOUT, or goes away, ends the stream.
            let sent = rt.block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, tx.send(item)).await });
            if failed || !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }));
    (
        [(header::CONTENT_TYPE, "application/octet-stream".to_owned()), (header::CONTENT_LENGTH, len.to_string())],
        body,
    )
        .into_response()
}
