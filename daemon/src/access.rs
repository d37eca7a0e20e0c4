//! Read access to checkpoints for `eval` and `checkpoint list|show|export`.
//!
//! sled allows one process per database, so while `unimod run` holds the store these
//! commands cannot open it. [`CheckpointAccess::open`] tries the store first; when it is
//! locked, it reads through the running daemon's HTTP port (`metrics.listen` of the same
//! config: `/v1/checkpoints...`), which serves the same verified data read-only. Blobs need
//! the token the daemon wrote to [`TOKEN_FILE`] in `storage.path` (readable only by users who
//! can read the store). The client never goes through `HTTP(S)_PROXY`: the daemon is local.

use std::sync::Arc;

use anyhow::Context as _;

use crate::checkpoint::{CheckpointError, CheckpointMeta, CheckpointStore};
use crate::checkpoint::{blob, Restored};
use crate::config::Config;
use crate::http::{BlobStream, CheckpointSource};

/// Name of the file in `storage.path` holding the token for checkpoint blobs over HTTP.
pub const TOKEN_FILE: &str = "http-token";

/// Writes a fresh random token to [`TOKEN_FILE`] in `store_dir` (mode 0600) and returns it.
pub fn write_token(store_dir: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let token: String = {
        use rand::Rng as _;
        let mut rng = rand::rng();
        (0..32).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
    };
    let path = store_dir.join(TOKEN_FILE);
    let tmp = store_dir.join(format!("{TOKEN_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(token.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

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
        /// The blob token, when [`TOKEN_FILE`] is readable.
        token: Option<String>,
        /// Where the token was looked for (for error messages).
        token_path: std::path::PathBuf,
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
                    .connect_timeout(std::time::Duration::from_secs(10))
                    // The daemon's port is local: never route it through HTTP(S)_PROXY.
                    .no_proxy()
                    .build()
                    .context("building an HTTP client")?;
                let token_path = config.storage.path.join(TOKEN_FILE);
                let token = std::fs::read_to_string(&token_path).ok().map(|t| t.trim().to_owned());
                Ok(Self::Remote { base, rt, client, token, token_path })
            }
            Err(e) => Err(e).with_context(|| format!("opening storage.path = {}", config.storage.path.display())),
        }
    }

    fn get(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let Self::Remote { base, rt, client, token, token_path } = self else { unreachable!("get is only used remotely") };
        let url = format!("{base}{path}");
        rt.block_on(async {
            let mut request = client.get(&url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let resp = request
                .send()
                .await
                .with_context(|| format!("the store is locked by a running daemon, and its HTTP port {base} does not answer"))?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                anyhow::bail!(
                    "{url}: the daemon serves checkpoint data only with its token, and {} is not readable by this user",
                    token_path.display()
                );
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

    /// Checkpoint `id` (`latest` or a number) for inference (`eval`, `embed`, `caption`):
    /// everything but the replay buffers, which are not read.
    pub fn restore_for_inference(&self, id: &str) -> anyhow::Result<Restored> {
        let meta = self.meta(id)?;
        let id = meta.id;
        Restored::from_blobs(meta, |name| {
            if name == blob::REPLAY {
                None
            } else {
                self.blob(id, name).map_err(|e| tracing::error!(error = %format!("{e:#}"), "reading blob")).ok()
            }
        })
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
        return store.latest_valid_meta()?.context("the store holds no valid checkpoint");
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

    fn blob_stream(&self, id: &str, name: &str) -> anyhow::Result<Option<BlobStream>> {
        let meta = match local_meta(&self.0, id) {
            Ok(m) => m,
            Err(e) if e.to_string().starts_with("no checkpoint") => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some((_, blob)) = meta.blob(name) else { return Ok(None) };
        let len = blob.len;
        let chunks = self.0.blob_chunks(meta.id, name)?;
        Ok(Some(BlobStream { len, chunks: Box::new(chunks.map(|c| c.map_err(anyhow::Error::from))) }))
    }
}
