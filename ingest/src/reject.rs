//! Why a record was rejected, and a rate-limited log line for rejections.
//!
//! Every rejection carries a [`RejectReason`] (a low-cardinality label for
//! `unimod_records_rejected_total{kind,reason}` and for the dead-letter `unimod-error` header)
//! and a free-text detail (logs and dead-letter header only, never a metric label).

use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::record::{RecordKind, SourcePos};

/// The reason a record could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The record has no value (a tombstone) or an empty one.
    EmptyPayload,
    /// The value is not JSON (or not UTF-8) where JSON is required.
    NotJson,
    /// The JSON value is not an object, or has an unsupported schema version `v`.
    BadSchema,
    /// A required field is missing (`text`, `caption`, or an image source).
    MissingField,
    /// A field has the wrong type or an invalid value (e.g. bad base64).
    InvalidField,
    /// The text or caption is empty after whitespace normalisation.
    EmptyText,
    /// Precomputed detector regions are inconsistent (dimensions, non-finite values, boxes
    /// outside the image, feature length).
    InvalidRegions,
    /// The image URL is not http/https or does not parse.
    BadUrl,
    /// The image URL's host is or resolves to a refused address (loopback, private, ...).
    BlockedAddress,
    /// The download timed out (after the configured retries).
    FetchTimeout,
    /// The server answered with a non-success HTTP status.
    HttpStatus,
    /// Too many redirects (or a redirect without a usable `Location`).
    TooManyRedirects,
    /// The server answered with a content type that is not an image.
    BadContentType,
    /// The image body is larger than `fetch.max_image_bytes`.
    TooLarge,
    /// Any other network failure (connection refused, reset, TLS, DNS).
    FetchFailed,
    /// The image dimensions or pixel count exceed `image.max_dimension` / `image.max_pixels`.
    ImageTooLarge,
    /// The bytes are not an image in a supported format.
    UnsupportedFormat,
    /// The image is in a supported format but does not decode.
    ImageDecode,
    /// Tokenisation failed.
    Tokenize,
    /// The record made a training step's loss or gradient non-finite (found by the trainer
    /// after preprocessing accepted it).
    Nonfinite,
}

impl RejectReason {
    /// Every reason, in a fixed order (for pre-registering metric series).
    pub const ALL: [RejectReason; 20] = [
        RejectReason::EmptyPayload,
        RejectReason::NotJson,
        RejectReason::BadSchema,
        RejectReason::MissingField,
        RejectReason::InvalidField,
        RejectReason::EmptyText,
        RejectReason::InvalidRegions,
        RejectReason::BadUrl,
        RejectReason::BlockedAddress,
        RejectReason::FetchTimeout,
        RejectReason::HttpStatus,
        RejectReason::TooManyRedirects,
        RejectReason::BadContentType,
        RejectReason::TooLarge,
        RejectReason::FetchFailed,
        RejectReason::ImageTooLarge,
        RejectReason::UnsupportedFormat,
        RejectReason::ImageDecode,
        RejectReason::Tokenize,
        RejectReason::Nonfinite,
    ];

    /// The snake_case label used in metrics and the dead-letter `unimod-error` header.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::EmptyPayload => "empty_payload",
            RejectReason::NotJson => "not_json",
            RejectReason::BadSchema => "bad_schema",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::EmptyText => "empty_text",
            RejectReason::InvalidRegions => "invalid_regions",
            RejectReason::BadUrl => "bad_url",
            RejectReason::BlockedAddress => "blocked_address",
            RejectReason::FetchTimeout => "fetch_timeout",
            RejectReason::HttpStatus => "http_status",
            RejectReason::TooManyRedirects => "too_many_redirects",
            RejectReason::BadContentType => "bad_content_type",
            RejectReason::TooLarge => "too_large",
            RejectReason::FetchFailed => "fetch_failed",
            RejectReason::ImageTooLarge => "image_too_large",
            RejectReason::UnsupportedFormat => "unsupported_format",
            RejectReason::ImageDecode => "image_decode",
            RejectReason::Tokenize => "tokenize",
            RejectReason::Nonfinite => "nonfinite",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejection: the reason (a label) and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Low-cardinality reason.
    pub reason: RejectReason,
    /// What exactly was wrong (for logs and the dead-letter header).
    pub detail: String,
}

impl Rejection {
    /// A rejection with the given reason and detail.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }

    /// The dead-letter `unimod-error` header value: `reason: detail`.
    pub fn header_value(&self) -> String {
        format!("{}: {}", self.reason, self.detail)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for Rejection {}

/// A limiter for log lines: at most `burst` lines per `interval`; lines over the budget are
/// counted and the count is reported with the next line that passes.
#[derive(Debug)]
pub struct LogRateLimiter {
    burst: u32,
    interval: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    window_start: Instant,
    emitted: u32,
    suppressed: u64,
}

impl LogRateLimiter {
    /// At most `burst` lines per `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst,
            interval,
            state: Mutex::new(LimiterState { window_start: Instant::now(), emitted: 0, suppressed: 0 }),
        }
    }

    /// Asks to emit one line at `now`: `Some(suppressed)` (the number of lines dropped since the
    /// last emitted one) when it may be emitted, `None` when it must be dropped.
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock();
        if now.saturating_duration_since(state.window_start) >= self.interval {
            state.window_start = now;
            state.emitted = 0;
        }
        if state.emitted < self.burst {
            state.emitted += 1;
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }

    /// [`check_at`](Self::check_at) with the current time.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }
}

impl Default for LogRateLimiter {
    /// 10 lines per 10 seconds.
    fn default() -> Self {
        Self::new(10, Duration::from_secs(10))
    }
}

/// Logs a rejection at `warn` level, rate-limited by `limiter`.
pub fn log_rejection(limiter: &LogRateLimiter, kind: RecordKind, pos: &SourcePos, rejection: &Rejection) {
    if let Some(suppressed) = limiter.check() {
        tracing::warn!(
            kind = kind.as_str(),
            source = %pos,
            reason = rejection.reason.as_str(),
            suppressed,
            "record rejected: {}",
            rejection.detail
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for reason in RejectReason::ALL {
            let label = reason.as_str();
            assert!(label.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{label}");
            assert!(seen.insert(label), "duplicate label {label}");
        }
    }

    #[test]
    fn limiter_allows_a_burst_then_counts_suppressed_lines() {
        let limiter = LogRateLimiter::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(t0), Some(0));
        assert_eq!(limiter.check_at(t0), Some(0));
        assert_eq!(limiter.check_at(t0), None);
        assert_eq!(limiter.check_at(t0 + Duration::from_secs(1)), None);
        // A new window: the next line reports the two dropped ones.
        assert_eq!(limiter.check_at(t0 + Duration::from_secs(11)), Some(2));
        assert_eq!(limiter.check_at(t0 + Duration::from_secs(11)), Some(0));
    }
}
