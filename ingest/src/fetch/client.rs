//! The image fetcher: reqwest with every defence a service fetching producer-supplied URLs
//! needs.
//!
//! - http and https only, checked on the first URL and on every redirect hop;
//! - redirects followed by hand (reqwest's own policy is off) up to `fetch.max_redirects`,
//!   each hop's host checked by the address guard ([`super::guard`]);
//! - connect timeout, and a total deadline per attempt covering all hops and the body;
//! - the body streamed with a byte limit (`Content-Length` is used only to refuse early,
//!   never to accept);
//! - a process-wide concurrency limit (a semaphore);
//! - bounded retries with exponential backoff, on timeouts and HTTP 5xx only;
//! - no proxy from the environment (a proxy would resolve names and defeat the guard).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::Client;
use tokio::sync::Semaphore;
use url::{Host, Url};

use crate::config::FetchConfig;
use crate::reject::{RejectReason, Rejection};
use crate::telemetry::IngestMetrics;

use super::guard::{check_ip, BlockedAddress, GuardedResolver};

/// The fetcher could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the image HTTP client: {0}")]
pub struct FetcherBuildError(#[from] reqwest::Error);

/// One failed attempt: the rejection and whether another attempt may succeed.
struct AttemptError {
    rejection: Rejection,
    retryable: bool,
}

impl AttemptError {
    fn fatal(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self { rejection: Rejection::new(reason, detail), retryable: false }
    }
}

/// Downloads images. Cheap to clone (shares the connection pool and the semaphore).
#[derive(Debug, Clone)]
pub struct ImageFetcher {
    client: Client,
    config: Arc<FetchConfig>,
    permits: Arc<Semaphore>,
    metrics: Option<IngestMetrics>,
}

impl ImageFetcher {
    /// A fetcher for `config` (assumed validated); `metrics` receives
    /// `unimod_image_fetch_seconds{outcome}` when given.
    pub fn new(config: &FetchConfig, metrics: Option<IngestMetrics>) -> Result<Self, FetcherBuildError> {
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(config.connect_timeout())
            .timeout(config.timeout())
            .user_agent(config.user_agent.clone())
            .dns_resolver(Arc::new(GuardedResolver { allow_private_networks: config.allow_private_networks }))
            .build()?;
        Ok(Self {
            client,
            config: Arc::new(config.clone()),
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            metrics,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Downloads the image at `url` (all attempts), or says why it could not.
    pub async fn fetch(&self, url: &Url) -> Result<Vec<u8>, Rejection> {
        // The semaphore is never closed; a closed one would only mean "no limit".
        let _permit = self.permits.acquire().await.ok();
        let started = Instant::now();
        let mut attempt = 0u32;
        let result = loop {
            match tokio::time::timeout(self.config.timeout(), self.attempt(url)).await {
                Ok(Ok(bytes)) => break Ok(bytes),
                Ok(Err(e)) if e.retryable && attempt < self.config.retries => {}
                Ok(Err(e)) => break Err(e.rejection),
                Err(_elapsed) if attempt < self.config.retries => {}
                Err(_elapsed) => {
                    break Err(Rejection::new(
                        RejectReason::FetchTimeout,
                        format!("{url}: no complete answer within {:?}", self.config.timeout()),
                    ))
                }
            }
            let backoff = Duration::from_millis(self.config.retry_backoff_ms.saturating_mul(1 << attempt.min(16)));
            tokio::time::sleep(backoff).await;
            attempt += 1;
        };
        if let Some(metrics) = &self.metrics {
            let outcome = match &result {
                Ok(_) => "ok",
                Err(r) => r.reason.as_str(),
            };
            metrics.observe_fetch(outcome, started.elapsed().as_secs_f64());
        }
        result
    }

    fn check_url(&self, url: &Url) -> Result<(), AttemptError> {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(AttemptError::fatal(RejectReason::BadUrl, format!("{url}: scheme is not http or https")));
        }
        let ip = match url.host() {
            None => return Err(AttemptError::fatal(RejectReason::BadUrl, format!("{url}: no host"))),
            Some(Host::Domain(_)) => return Ok(()),
            Some(Host::Ipv4(v4)) => v4.into(),
            Some(Host::Ipv6(v6)) => v6.into(),
        };
        let host = url.host_str().unwrap_or_default();
        check_ip(host, ip, self.config.allow_private_networks)
            .map_err(|b| AttemptError::fatal(RejectReason::BlockedAddress, b.to_string()))
    }

    /// One attempt: every hop of the redirect chain and the body.
    async fn attempt(&self, url: &Url) -> Result<Vec<u8>, AttemptError> {
        let mut current = url.clone();
        let mut hops = 0u32;
        loop {
            self.check_url(&current)?;
            let response = self.client.get(current.clone()).send().await.map_err(|e| map_send_error(&current, &e))?;
            let status = response.status();
            if status.is_redirection() {
                if hops >= self.config.max_redirects {
                    return Err(AttemptError::fatal(
                        RejectReason::TooManyRedirects,
                        format!("{url}: more than fetch.max_redirects = {} redirects", self.config.max_redirects),
                    ));
                }
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        AttemptError::fatal(RejectReason::HttpStatus, format!("{current}: {status} without a Location"))
                    })?;
                current = current.join(location).map_err(|e| {
                    AttemptError::fatal(RejectReason::BadUrl, format!("{current}: bad redirect Location: {e}"))
                })?;
                hops += 1;
                continue;
            }
            if !status.is_success() {
                return Err(AttemptError {
                    rejection: Rejection::new(RejectReason::HttpStatus, format!("{current}: HTTP {status}")),
                    retryable: status.is_server_error(),
                });
            }
            return self.read_body(&current, response).await;
        }
    }

    async fn read_body(&self, url: &Url, mut response: reqwest::Response) -> Result<Vec<u8>, AttemptError> {
        if let Some(content_type) = response.headers().get(CONTENT_TYPE) {
            let value = content_type.to_str().unwrap_or("").trim().to_ascii_lowercase();
            let essence = value.split(';').next().unwrap_or("").trim();
            if !(essence.starts_with("image/") || essence == "application/octet-stream") {
                return Err(AttemptError::fatal(
                    RejectReason::BadContentType,
                    format!("{url}: content type `{essence}` is not an image"),
                ));
            }
        }
        let limit = self.config.max_image_bytes;
        let too_large = || {
            AttemptError::fatal(RejectReason::TooLarge, format!("{url}: body exceeds fetch.max_image_bytes = {limit}"))
        };
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        // Pre-size from the declared length only up to the limit; growth is checked below.
        let mut body = Vec::with_capacity(declared.unwrap_or(64 * 1024).min(limit) as usize);
        while let Some(chunk) = response.chunk().await.map_err(|e| map_send_error(url, &e))? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        if body.is_empty() {
            return Err(AttemptError::fatal(RejectReason::ImageDecode, format!("{url}: empty body")));
        }
        Ok(body)
    }
}

/// Maps a reqwest error: a guard refusal, a timeout (retryable), or another failure.
fn map_send_error(url: &Url, error: &reqwest::Error) -> AttemptError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut chain = Vec::new();
    while let Some(e) = source {
        if let Some(blocked) = e.downcast_ref::<BlockedAddress>() {
            return AttemptError::fatal(RejectReason::BlockedAddress, format!("{url}: {blocked}"));
        }
        chain.push(e.to_string());
        source = e.source();
    }
    if error.is_timeout() {
        return AttemptError {
            rejection: Rejection::new(RejectReason::FetchTimeout, format!("{url}: timed out")),
            retryable: true,
        };
    }
    AttemptError::fatal(RejectReason::FetchFailed, format!("{url}: {}", chain.join(": ")))
}
