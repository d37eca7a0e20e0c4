//! Starting the real `unimod` binary against a real broker: configs, processes, HTTP
//! probes and checkpoint reads for the daemon's end-to-end tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use unimod_e2e::synth::{write_dataset, Manifest, SynthConfig};
use unimod_e2e::Broker;

/// Path of the `unimod` binary: `$UNIMOD_BIN`, or the one beside this test's target dir
/// (built once per test process with `cargo build -p unimod --bin unimod` when missing).
pub(crate) fn unimod_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("UNIMOD_BIN") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/daemon-<hash> -> target/<profile>/unimod
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target profile dir").to_path_buf();
        let bin = profile_dir.join("unimod");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "unimod", "--bin", "unimod"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for the unimod binary");
        assert!(status.success(), "cargo build -p unimod failed");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Topics of one test (random names).
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    pub text: String,
    pub image: String,
    pub pair: String,
    pub dead_letter: String,
}

impl Topics {
    /// Creates the three input topics (`partitions` each) and a dead-letter topic.
    pub(crate) async fn create(broker: &Broker, partitions: i32) -> anyhow::Result<Self> {
        Ok(Self {
            text: broker.unique_topic("text", partitions).await?,
            image: broker.unique_topic("image", partitions).await?,
            pair: broker.unique_topic("pair", partitions).await?,
            dead_letter: broker.unique_topic("dlq", 1).await?,
        })
    }
}

/// A scratch folder with a config for one daemon.
pub(crate) struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub metrics_port: u16,
    pub store: PathBuf,
}

/// A config small enough for a CPU test: a tiny custom model, few regions, short texts.
pub(crate) fn write_config(
    dir: &Path,
    brokers: &str,
    topics: &Topics,
    arch: &str,
    extra: &str,
) -> anyhow::Result<(PathBuf, u16, PathBuf)> {
    let port = free_port();
    let store = dir.join("store");
    let group = unimod_e2e::kafka::random_name("group");
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = {{ text = "{t}", image = "{i}", pair = "{p}" }}
dead_letter_topic = "{d}"
health_window_seconds = 3.0
lag_interval_seconds = 0.5
request_timeout_seconds = 3.0
# A killed member leaves the group after this, so a restarted daemon rejoins quickly.
options = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "1000" }}

[storage]
path = "{store}"
checkpoint_every_steps = 5
checkpoint_every_seconds = 1
keep_checkpoints = 3

[model]
arch = "{arch}"
size = "custom"
layers = 2
hidden = 64
heads = 2
dropout = 0.0

[train]
batch_size = 16
learning_rate = 2e-3
warmup_steps = 5
max_batch_wait_ms = 100
text_buckets = [16, 32]
object_buckets = [8, 16]
replay_ratio = 0.0
queue_capacity = 64
seed = 7

[image]
box_scales = [1, 2]
crop_size = 4

[text]
vocab_size = 320
bootstrap_records = 400
max_length = 24

[fetch]
allow_private_networks = true

[metrics]
listen = "127.0.0.1:{port}"

[log]
format = "json"
level = "info"

[shutdown]
drain_seconds = 30
{extra}
"#,
        t = topics.text,
        i = topics.image,
        p = topics.pair,
        d = topics.dead_letter,
        store = store.display(),
    );
    let config = dir.join("unimod.toml");
    std::fs::write(&config, text).context("writing the config")?;
    Ok((config, port, store))
}

impl Setup {
    pub(crate) fn new(brokers: &str, topics: &Topics, arch: &str, extra: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("tempdir")?;
        let (config, metrics_port, store) = write_config(dir.path(), brokers, topics, arch, extra)?;
        Ok(Self { dir, config, metrics_port, store })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.metrics_port)
    }

    /// Starts `unimod run` with extra arguments and environment.
    pub(crate) fn start(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Daemon> {
        let log = self.dir.path().join(format!("daemon-{}.log", rand::random::<u32>()));
        let file = std::fs::File::create(&log).context("daemon log")?;
        let mut cmd = Command::new(unimod_bin());
        cmd.arg("run").arg("--config").arg(&self.config).args(args).env_remove("NOTIFY_SOCKET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("log handle")?)
            .stderr(file)
            .spawn()
            .context("starting unimod run")?;
        Ok(Daemon { child: Some(child), log })
    }

    /// Runs a `unimod` subcommand to completion; returns (status, stdout, stderr).
    pub(crate) fn command(&self, args: &[&str]) -> anyhow::Result<(ExitStatus, String, String)> {
        let out = Command::new(unimod_bin()).args(args).output().context("running unimod")?;
        Ok((out.status, String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into()))
    }

    /// `unimod checkpoint show latest --json` (works with or without a running daemon).
    pub(crate) fn latest_checkpoint(&self) -> anyhow::Result<Option<serde_json::Value>> {
        let cfg = self.config.display().to_string();
        let (status, out, err) = self.command(&["checkpoint", "show", "latest", "--config", &cfg, "--json"])?;
        if !status.success() {
            if err.contains("no valid checkpoint") || err.contains("no such checkpoint") || err.contains("no checkpoint") {
                return Ok(None);
            }
            bail!("checkpoint show failed: {err}");
        }
        Ok(Some(serde_json::from_str(&out).context("checkpoint show output")?))
    }

    /// Produces the synthetic dataset in `dir` and publishes it; returns the manifest.
    pub(crate) async fn publish_synthetic(&self, brokers: &str, topics: &Topics, cfg: &SynthConfig) -> anyhow::Result<Manifest> {
        let data = self.dir.path().join("data");
        let manifest = write_dataset(&data, cfg)?;
        let bin = unimod_bin();
        let mut jobs = vec![
            ("pair", &topics.pair, data.join("pairs.jsonl")),
            ("text", &topics.text, data.join("text.jsonl")),
            ("image", &topics.image, data.join("image.jsonl")),
        ];
        if cfg.bad {
            jobs.push(("pair", &topics.pair, data.join("bad_pairs.jsonl")));
            jobs.push(("text", &topics.text, data.join("bad_text.jsonl")));
            jobs.push(("image", &topics.image, data.join("bad_image.jsonl")));
        }
        for (kind, topic, file) in jobs {
            let out = tokio::process::Command::new(&bin)
                .args(["produce", "--brokers", brokers, "--kind", kind, "--topic", topic])
                .arg(&file)
                .output()
                .await
                .context("unimod produce")?;
            if !out.status.success() {
                bail!("produce {} failed: {}", file.display(), String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(manifest)
    }
}

/// A running daemon; killed on drop.
pub(crate) struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(crate) fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status();
    }

    /// Waits for exit up to `timeout`.
    pub(crate) fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("already reaped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("daemon did not exit within {timeout:?}; log:\n{}", self.log_tail(3000));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn log_tail(&self, n: usize) -> String {
        let t = self.log_text();
        let start = t.len().saturating_sub(n);
        let start = (start..t.len()).find(|i| t.is_char_boundary(*i)).unwrap_or(t.len());
        t[start..].to_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// GET returning (status, body), or None when nothing answers.
pub(crate) async fn http_get(url: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().ok()?;
    let resp = client.get(url).send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

/// Polls `check` every 100 ms until it returns Some or `timeout` passes.
pub(crate) async fn wait_for<T>(timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `records` counts of checkpoint metadata as (text, image, pair, rejected).
pub(crate) fn counts(meta: &serde_json::Value) -> (u64, u64, u64, u64) {
    let r = &meta["records"];
    let g = |k: &str| r[k].as_u64().unwrap_or(0);
    (g("text"), g("image"), g("pair"), g("rejected"))
}

/// Whether a daemon's log shows its stop made the final state durable: written then, or
/// already held by the latest checkpoint (the stop then does not write it again).
pub(crate) fn logged_final_checkpoint(log: &str) -> bool {
    log.contains("final checkpoint written") || log.contains("the latest checkpoint already holds this state")
}

/// Latest checkpoint metadata through the running daemon's HTTP port.
pub(crate) async fn latest_over_http(setup: &Setup) -> Option<serde_json::Value> {
    let (status, body) = http_get(&setup.url("/v1/checkpoints/latest")).await?;
    (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}
