//! The HTTP endpoint on `metrics.listen`: `/metrics` (Prometheus text format), `/healthz`
//! (200 while the process is alive), `/readyz` (200 only while consuming and training), and
//! read-only checkpoint access for `unimod eval` and `unimod checkpoint` while `run` holds
//! the sled store (sled allows one process per database):
//!
//! - `GET /v1/checkpoints` — JSON array of checkpoint metadata, newest first;
//! - `GET /v1/checkpoints/{id}` — one checkpoint's metadata (`latest` allowed);
//! - `GET /v1/checkpoints/{id}/blobs/{name}` — one verified blob's bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// Read access to checkpoints, served to other processes.
pub trait CheckpointSource: Send + Sync + 'static {
    /// All checkpoints' metadata, newest first.
    fn list_json(&self) -> anyhow::Result<serde_json::Value>;
    /// One checkpoint's metadata (`id` may be `latest`).
    fn meta_json(&self, id: &str) -> anyhow::Result<Option<serde_json::Value>>;
    /// One blob of a checkpoint, verified.
    fn blob(&self, id: &str, name: &str) -> anyhow::Result<Option<Vec<u8>>>;
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    health: Arc<Health>,
    checkpoints: Option<Arc<dyn CheckpointSource>>,
}

/// Binds `addr` and serves until `shutdown` is cancelled. Binding errors are returned at
/// once so a port conflict stops the start with a clear message.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Arc<Health>,
    checkpoints: Option<Arc<dyn CheckpointSource>>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on metrics.listen = {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let state = AppState { registry, health, checkpoints };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/checkpoints", get(list_checkpoints))
        .route("/v1/checkpoints/{id}", get(show_checkpoint))
        .route("/v1/checkpoints/{id}/blobs/{name}", get(checkpoint_blob))
        .with_state(state);
    let handle = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
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

async fn list_checkpoints(State(s): State<AppState>) -> Response {
    let Some(src) = s.checkpoints else { return unavailable() };
    match tokio::task::spawn_blocking(move || src.list_json()).await {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e.into()),
    }
}

async fn show_checkpoint(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let Some(src) = s.checkpoints else { return unavailable() };
    match tokio::task::spawn_blocking(move || src.meta_json(&id)).await {
        Ok(Ok(Some(v))) => axum::Json(v).into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, "no such checkpoint\n").into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e.into()),
    }
}

async fn checkpoint_blob(State(s): State<AppState>, Path((id, name)): Path<(String, String)>) -> Response {
    let Some(src) = s.checkpoints else { return unavailable() };
    match tokio::task::spawn_blocking(move || src.blob(&id, &name)).await {
        Ok(Ok(Some(bytes))) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, "no such checkpoint or blob\n").into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e.into()),
    }
}
