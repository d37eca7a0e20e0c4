//! The daemon's HTTP listeners (`metrics.listen`, `serve.listen`): one accept loop for both,
//! bounded against clients that hold connections open.
//!
//! - A client has [`HEADER_READ_TIMEOUT`] to send a request's headers (also for each further
//!   request on a kept-alive connection); a "slowloris" client that trickles its headers is
//!   disconnected instead of holding a connection for ever (axum's own `serve` sets no timer,
//!   so hyper's header timeout never fired).
//! - At most [`MAX_CONNECTIONS`] connections are open at once; further ones are closed at
//!   accept (counted in the log at most once a minute), so open connections cannot exhaust the
//!   process's file descriptors.
//! - At shutdown, connections are asked to finish their request in flight; the caller bounds
//!   how long it waits for the task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Time a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections open at once on one listener.
pub const MAX_CONNECTIONS: usize = 256;

/// Binds `addr`; the error names the configuration key (`key`) so a port conflict stops the
/// start with one clear line.
pub async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {key} = {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    Ok((listener, local))
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets the requests in flight
/// finish (the caller bounds the wait on the returned task). `what` names the listener in logs.
pub fn spawn(listener: TcpListener, app: Router, shutdown: CancellationToken, what: &'static str) -> tokio::task::JoinHandle<()> {
    spawn_with(listener, app, shutdown, what, Limits::default())
}

/// The bounds of one listener (tests lower them).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { header_read_timeout: HEADER_READ_TIMEOUT, max_connections: MAX_CONNECTIONS }
    }
}

/// [`spawn`] with explicit limits.
pub fn spawn_with(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    what: &'static str,
    limits: Limits,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let open = Arc::new(Semaphore::new(limits.max_connections));
        let mut refused = 0u64;
        let mut last_refusal_log: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = what, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
                refused += 1;
                if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(
                        listener = what,
                        open = limits.max_connections,
                        refused,
                        "too many open HTTP connections; closing new ones"
                    );
                    last_refusal_log = Some(Instant::now());
                }
                drop(stream);
                continue;
            };
            let service = TowerToHyperService::new(app.clone());
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .serve_connection(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(listener = what, error = %e, "HTTP connection ended with an error");
                        }
                    }
                    () = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        drop(listener);
        // Every connection task holds a permit until it ends: all of them back = all done.
        let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        let _ = open.acquire_many(all).await;
    })
}

#[cfg(test)]
mod tests;
