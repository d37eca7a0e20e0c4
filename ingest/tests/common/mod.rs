//! A tiny HTTP/1.1 server for fetch tests, on a free loopback port, with routes that
//! misbehave in the ways image hosts do. It counts connections and hits per path.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running test server.
pub(crate) struct TestServer {
    /// Its address.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    gate: watch::Sender<bool>,
}

struct State {
    png: Vec<u8>,
    jpeg: Vec<u8>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    gate: watch::Receiver<bool>,
}

/// A flat-colour PNG.
pub(crate) fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("encode png");
    out.into_inner()
}

/// A small valid PNG whose header (IHDR, with a correct CRC) declares `width x height`.
pub(crate) fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut png = png(1, 1, [0, 0, 0]);
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A photo-like JPEG (smooth gradients plus texture).
pub(crate) fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let t = ((x * 7 + y * 13) % 31) as u8;
        image::Rgb([(x * 255 / width) as u8 ^ t, (y * 255 / height) as u8, ((x + y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).expect("encode jpeg");
    out.into_inner()
}

impl TestServer {
    /// Starts the server on 127.0.0.1 with a free port.
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let (gate, gate_rx) = watch::channel(false);
        let state = Arc::new(State { png: png(64, 48, [200, 100, 50]), jpeg: jpeg(64, 48), hits: hits.clone(), gate: gate_rx });
        let conns = connections.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = handle(socket, state).await;
                });
            }
        });
        Self { addr, connections, hits, gate }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests for `path` so far.
    pub(crate) fn hits(&self, path: &str) -> usize {
        self.hits.lock().get(path).copied().unwrap_or(0)
    }

    /// Lets requests to `/gate` through.
    pub(crate) fn open_gate(&self) {
        let _ = self.gate.send(true);
    }
}

async fn handle(mut socket: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let hit = {
        let mut hits = state.hits.lock();
        let h = hits.entry(path.clone()).or_default();
        *h += 1;
        *h
    };
    let simple = |status: &str, ctype: &str, body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    };
    let redirect = |status: &str, location: &str| {
        format!("HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let response = match path.as_str() {
        "/ok.png" => simple("200 OK", "image/png", &state.png),
        "/ok.jpg" => simple("200 OK", "image/jpeg; charset=binary", &state.jpeg),
        "/octet.png" => simple("200 OK", "application/octet-stream", &state.png),
        "/missing.png" => simple("404 Not Found", "text/plain", b"not found"),
        "/page.html" => simple("200 OK", "text/html", b"<html><body>not an image</body></html>"),
        "/not-an-image.png" => simple("200 OK", "image/png", b"this is not a png at all"),
        "/slow.png" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            simple("200 OK", "image/png", &state.png)
        }
        "/gate.png" => {
            let mut gate = state.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
            simple("200 OK", "image/png", &state.png)
        }
        "/huge.png" => {
            // No Content-Length: the body runs until the connection closes.
            socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n").await?;
            socket.write_all(&state.png).await?;
            let filler = vec![0u8; 64 * 1024];
            for _ in 0..32 {
                socket.write_all(&filler).await?;
            }
            return socket.shutdown().await;
        }
        "/chunked.png" => {
            // Chunked encoding with a lying Content-Length-free body larger than the limit.
            socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n").await?;
            let filler = vec![b'x'; 16 * 1024];
            for _ in 0..64 {
                socket.write_all(format!("{:x}\r\n", filler.len()).as_bytes()).await?;
                socket.write_all(&filler).await?;
                socket.write_all(b"\r\n").await?;
            }
            socket.write_all(b"0\r\n\r\n").await?;
            return socket.shutdown().await;
        }
        "/declared-huge.png" => {
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 900000000\r\nConnection: close\r\n\r\n")
                .await?;
            socket.write_all(&state.png).await?;
            return socket.shutdown().await;
        }
        "/loop" => redirect("302 Found", "/loop"),
        "/to-ok" => redirect("301 Moved Permanently", "/ok.png"),
        "/to-file" => redirect("302 Found", "file:///etc/passwd"),
        "/flaky.png" if hit == 1 => simple("503 Service Unavailable", "text/plain", b"busy"),
        "/flaky.png" => simple("200 OK", "image/png", &state.png),
        "/down.png" => simple("500 Internal Server Error", "text/plain", b"down"),
        _ => simple("404 Not Found", "text/plain", b"no route"),
    };
    socket.write_all(&response).await?;
    socket.shutdown().await
}
