//! Read access to checkpoints for `eval` and `checkpoint list|show|export`.
//!
//! sled allows one process per database, so while `unimod run` holds the store these
//! commands cannot open it. [`CheckpointAccess::open`] tries the store first; when it is
//! locked, it reads through the running daemon's HTTP port (`metrics.listen` of the same
//! config: `/v1/checkpoints...`), which serves the same verified data read-only.

use std::sync::Arc;

use anyhow::Context as _;

use crate::checkpoint::{CheckpointError, CheckpointMeta, CheckpointStore};
use crate::config::Config;
use crate::http::CheckpointSource;

/// Where checkpoints are read from.
pub enum CheckpointAccess {
    /// The store, opened by this process.
    Local(Arc<CheckpointStore>),
    /// The running daemon, over HTTP.
    Remote {
        /// `http://host:port`.
        base: String,
        /// A small runtime for the blocking calls.
        rt: tokio::runtime::Runtime,
        /// The client.
        client: reqwest::Client,
    },
}

impl CheckpointAccess {
    /// Opens the store, or falls back to the daemon's HTTP port when `run` holds it.
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        match CheckpointStore::open(&config.storage.path) {
            Ok(store) => Ok(Self::Local(Arc::new(store))),
            Err(CheckpointError::Locked { .. }) => {
                let base = format!("http://{}", config.metrics.listen);
                tracing::info!(%base, "store is held by a running daemon; reading through its HTTP port");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting an HTTP client runtime")?;
                let client = reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(600))
                    .build()
                    .context("building an HTTP client")?;
                Ok(Self::Remote { base, rt, client })
            }
            Err(e) => Err(e).with_context(|| format!("opening storage.path = {}", config.storage.path.display())),
        }
    }

    fn get(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let Self::Remote { base, rt, client } = self else { unreachable!("get is only used remotely") };
        let url = format!("{base}{path}");
        rt.block_on(async {
            let resp = client
                .get(&url)
                .send()
                .await
                .with_context(|| format!("the store is locked by a running daemon, and its HTTP port {base} does not answer"))?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !resp.status().is_success() {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                anyhow::bail!("{url}: HTTP {status}: {}", body.trim());
            }
            Ok(Some(resp.bytes().await.with_context(|| format!("reading {url}"))?.to_vec()))
        })
    }

    /// Every checkpoint, newest first.
    pub fn list(&self) -> anyhow::Result<Vec<CheckpointMeta>> {
        match self {
            Self::Local(store) => Ok(store.list()?),
            Self::Remote { .. } => {
                let body = self.get("/v1/checkpoints")?.context("daemon does not serve checkpoints")?;
                Ok(serde_json::from_slice(&body).context("decoding the checkpoint list")?)
            }
        }
    }

    /// Metadata of `id` (`latest` = the newest one whose blobs verify).
    pub fn meta(&self, id: &str) -> anyhow::Result<CheckpointMeta> {
        match self {
            Self::Local(store) => local_meta(store, id),
            Self::Remote { .. } => {
                let body = self
                    .get(&format!("/v1/checkpoints/{id}"))?
                    .with_context(|| format!("no checkpoint {id}"))?;
                Ok(serde_json::from_slice(&body).context("decoding checkpoint metadata")?)
            }
        }
    }

    /// One verified blob of checkpoint `id`.
    pub fn blob(&self, id: u64, name: &str) -> anyhow::Result<Vec<u8>> {
        match self {
            Self::Local(store) => Ok(store.read_blob(id, name)?),
            Self::Remote { .. } => self
                .get(&format!("/v1/checkpoints/{id}/blobs/{name}"))?
                .with_context(|| format!("checkpoint {id} has no blob {name}")),
        }
    }
}

fn local_meta(store: &CheckpointStore, id: &str) -> anyhow::Result<CheckpointMeta> {
    if id == "latest" {
        let (meta, _) = store.load_latest_valid()?.context("the store holds no valid checkpoint")?;
        return Ok(meta);
    }
    let n: u64 = id.parse().with_context(|| format!("checkpoint id must be a number or `latest`, got {id:?}"))?;
    match store.meta(n) {
        Ok(m) => Ok(m),
        Err(CheckpointError::NotFound { .. }) => anyhow::bail!("no checkpoint {n} in the store"),
        Err(e) => Err(e.into()),
    }
}

/// Serves the daemon's own store over HTTP.
pub struct StoreSource(pub Arc<CheckpointStore>);

impl CheckpointSource for StoreSource {
    fn list_json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(self.0.list()?)?)
    }

    fn meta_json(&self, id: &str) -> anyhow::Result<Option<serde_json::Value>> {
        match local_meta(&self.0, id) {
            Ok(m) => Ok(Some(serde_json::to_value(m)?)),
            Err(e) if e.to_string().starts_with("no checkpoint") => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn blob(&self, id: &str, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let meta = match local_meta(&self.0, id) {
            Ok(m) => m,
            Err(e) if e.to_string().starts_with("no checkpoint") => return Ok(None),
            Err(e) => return Err(e),
        };
        if meta.blob(name).is_none() {
            return Ok(None);
        }
        Ok(Some(self.0.read_blob(meta.id, name)?))
    }
}
