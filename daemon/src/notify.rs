//! systemd's `NOTIFY_SOCKET` protocol (`sd_notify(3)`): `READY=1`, `WATCHDOG=1`,
//! `STOPPING=1`, `STATUS=...`, sent as datagrams on a Unix socket. Without `NOTIFY_SOCKET`
//! every call is a no-op, so the daemon runs the same outside systemd.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// A handle to the service manager, if there is one.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<PathBuf>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (honouring `WATCHDOG_PID`).
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from);
        let pid_matches = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&us| us > 0 && pid_matches)
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// A notifier for the socket at `path` (tests stand in for systemd with it).
    #[cfg(test)]
    pub(crate) fn to_socket(path: &std::path::Path) -> Self {
        Self { socket: Some(path.to_path_buf()), watchdog: None }
    }

    /// The interval at which `WATCHDOG=1` should be sent: half of `WATCHDOG_USEC`
    /// (or every 5 s when the socket is set but no watchdog is configured).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        match (&self.socket, self.watchdog) {
            (Some(_), Some(w)) => Some(w / 2),
            (Some(_), None) => Some(Duration::from_secs(5)),
            _ => None,
        }
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines). Errors are logged, never fatal.
    pub fn notify(&self, state: &str) {
        let Some(path) = &self.socket else { return };
        // Never block: a service manager (or a test) that stops reading must not stall the
        // daemon once the socket's queue (net.unix.max_dgram_qlen, often 10) is full; a
        // notification that does not fit is dropped with a warning.
        let result = UnixDatagram::unbound().and_then(|sock| {
            sock.set_nonblocking(true)?;
            let bytes = path.as_os_str().as_encoded_bytes();
            if let Some(abstract_name) = bytes.strip_prefix(b"@") {
                send_abstract(&sock, abstract_name, state)
            } else {
                sock.send_to(state.as_bytes(), path).map(|_| ())
            }
        });
        if let Err(e) = result {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                tracing::debug!(socket = %path.display(), "service manager socket full; notification dropped");
                return;
            }
            tracing::warn!(socket = %path.display(), error = %e, "cannot notify the service manager");
        }
    }

    /// `READY=1`.
    pub fn ready(&self) {
        self.notify("READY=1\nSTATUS=consuming and training");
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=draining");
    }

    /// `STATUS=...`.
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={status}"));
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(sock: &UnixDatagram, name: &[u8], state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "abstract sockets need Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier { socket: Some(path), watchdog: Some(Duration::from_secs(10)) };
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        n.ready();
        n.watchdog();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).expect("recv ready");
        assert!(std::str::from_utf8(&buf[..len]).expect("utf8").starts_with("READY=1"));
        let len = server.recv(&mut buf).expect("recv watchdog");
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn no_socket_is_a_no_op() {
        let n = Notifier::default();
        assert_eq!(n.watchdog_interval(), None);
        n.ready();
    }
}
