use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::http::{BlobStream, CheckpointSource, MAX_V1_REQUESTS};

/// Sends `request` (if any) and reads until the server closes the connection or `within`
/// passes; returns what was read and whether the server closed it.
async fn exchange(stream: &mut TcpStream, request: &[u8], within: Duration) -> (String, bool) {
    if !request.is_empty() {
        stream.write_all(request).await.expect("write");
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    exchange(&mut s, req.as_bytes(), Duration::from_secs(10)).await.0
}

async fn metrics_server(source: Option<Arc<dyn CheckpointSource>>) -> (std::net::SocketAddr, CancellationToken) {
    let stop = CancellationToken::new();
    let (addr, _task) = crate::http::serve(
        "127.0.0.1:0".parse().expect("addr"),
        prometheus::Registry::new(),
        Arc::new(Health::default()),
        source,
        None,
        stop.clone(),
    )
    .await
    .expect("serve");
    (addr, stop)
}

/// A client that trickles its headers (slowloris) is disconnected after the header timeout
/// while other clients are served. With axum's `serve` (no timer) it was held for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let (addr, stop) = metrics_server(None).await;
    let mut slow: Vec<TcpStream> = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Slow: ").await.expect("write");
        slow.push(s);
    }
    let started = Instant::now();
    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"), "/healthz while slow clients wait");
    let (_, closed) = exchange(&mut slow[0], b"a", super::HEADER_READ_TIMEOUT + Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert!(closed, "the slow client was still connected after {waited:?}");
    assert!(waited >= super::HEADER_READ_TIMEOUT - Duration::from_secs(1), "closed too early: {waited:?}");
    stop.cancel();
}

/// Connections beyond the cap are closed at once; a freed slot is usable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_accept() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi\n" }));
    let limits = super::Limits { header_read_timeout: Duration::from_secs(30), max_connections: 2 };
    let task = super::spawn_with(listener, app, stop.clone(), "test", limits);
    let idle1 = TcpStream::connect(addr).await.expect("connect");
    let idle2 = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(addr).await.expect("connect");
    let (text, closed) = exchange(&mut third, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", Duration::from_secs(5)).await;
    assert!(closed && text.is_empty(), "the third connection was served: {text:?}");
    drop(idle1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(get(addr, "/").await.ends_with("hi\n"), "a freed slot serves again");
    drop(idle2);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("the listener ends after the stop").expect("join");
}

/// A checkpoint source whose listing blocks until released.
struct Blocking {
    gate: Mutex<std_mpsc::Receiver<()>>,
}

impl CheckpointSource for Blocking {
    fn list_json(&self) -> anyhow::Result<serde_json::Value> {
        let _ = self.gate.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.recv_timeout(Duration::from_secs(20));
        Ok(serde_json::json!([]))
    }
    fn meta_json(&self, _id: &str) -> anyhow::Result<Option<serde_json::Value>> {
        Ok(None)
    }
    fn blob_stream(&self, _id: &str, _name: &str) -> anyhow::Result<Option<BlobStream>> {
        Ok(None)
    }
}

/// At most `MAX_V1_REQUESTS` `/v1` requests run at once: the next one gets 503 with
/// `Retry-After` while they run, and is served once they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_requests_beyond_the_cap_get_503() {
    let (release, gate) = std_mpsc::channel();
    let (addr, stop) = metrics_server(Some(Arc::new(Blocking { gate: Mutex::new(gate) }))).await;
    // The listing holds the source's lock, so the held requests queue inside their slots.
    let held: Vec<_> = (0..MAX_V1_REQUESTS).map(|_| tokio::spawn(get(addr, "/v1/checkpoints"))).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = get(addr, "/v1/checkpoints").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "request {} was not refused: {refused}", MAX_V1_REQUESTS + 1);
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200"), "/metrics is not behind the /v1 cap");
    for _ in 0..MAX_V1_REQUESTS {
        release.send(()).expect("release");
    }
    for h in held {
        let answer = h.await.expect("join");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    release.send(()).expect("release");
    assert!(get(addr, "/v1/checkpoints").await.starts_with("HTTP/1.1 200"), "served again once the slots are free");
    stop.cancel();
}
