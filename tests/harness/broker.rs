//! A real Kafka-protocol broker (tansu) for tests: started on a free loopback port with
//! `sqlite://` storage in a scratch folder, stoppable and restartable on the same data, and
//! killed when the handle is dropped (also when a test panics).
//!
//! Why `sqlite://` and not `memory://`: a restart must keep the topics, records and group
//! offsets (the restart tests depend on it), and the memory engine loses them. tansu turns an
//! absolute sqlite path into a wrong one, so the broker runs with the scratch folder as its
//! working directory and the relative URL `sqlite://broker.db`.
//!
//! The binary is `$TANSU_BIN` if set, else `tansu` on the `PATH`
//! (install: `cargo install tansu --locked --features libsql`, or `scripts/install-deps.sh`).

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// How long a broker may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop may take before the broker is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running (or stopped) tansu broker owned by one test.
#[derive(Debug)]
pub struct Broker {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

/// Finds the tansu binary: `$TANSU_BIN`, else `tansu` on the `PATH`.
pub fn tansu_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        bail!("TANSU_BIN={} is not a file", bin.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("tansu");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "tansu not found: set TANSU_BIN or put tansu on the PATH \
         (cargo install tansu --locked --features libsql, or scripts/install-deps.sh)"
    )
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

impl Broker {
    /// Starts a broker on a free loopback port in a new scratch folder and waits until it
    /// answers metadata requests.
    pub fn start() -> anyhow::Result<Broker> {
        let bin = tansu_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("unimod-tansu-")
            .tempdir()
            .context("creating the broker scratch folder")?;
        let port = free_port()?;
        let mut broker = Broker { bin, dir, port, child: None };
        broker.spawn()?;
        Ok(broker)
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The scratch folder holding `broker.db` and `broker.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the broker (SIGTERM, then SIGKILL after a grace period). The data stays.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        // No libc here (unsafe is denied): ask `kill` to deliver SIGTERM.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().context("waiting for tansu")?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().context("killing tansu")?;
        child.wait().context("reaping tansu")?;
        Ok(())
    }

    /// Kills the broker at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing tansu")?;
            child.wait().context("reaping tansu")?;
        }
        Ok(())
    }

    /// Starts the broker again on the same port and data; a no-op when it runs.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            self.stop()?;
        }
        self.spawn()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// The last `max` bytes of the broker's log (for failure messages).
    pub fn log_tail(&self, max: usize) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(self.log_path()) {
            let _ = file.read_to_string(&mut text);
        }
        let start = text.len().saturating_sub(max);
        let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        text[start..].to_owned()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening broker.log")?;
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://broker.db"])
            .current_dir(self.dir.path())
            .env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready().with_context(|| {
            format!("tansu did not come up on {url}; broker.log ends with:\n{}", self.log_tail(4000))
        })
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        // First the port, then a real metadata round trip.
        loop {
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("tansu exited with {status}");
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("port {} did not open within {START_TIMEOUT:?}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("log_level", "3")
            .create()
            .context("creating a metadata client")?;
        loop {
            match consumer.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
                Ok(_) => {}
                Err(error) if Instant::now() > deadline => {
                    bail!("no metadata within {START_TIMEOUT:?}: {error}")
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates `name` with `partitions` partitions and waits until the broker's metadata
    /// shows all of them.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .context("creating an admin client")?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics([&topic], &options).await.context("CreateTopics")?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("creating topic {topic}: {code}");
            }
        }
        let brokers = self.brokers();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || wait_for_topic(&brokers, &name, partitions))
            .await
            .context("waiting for the topic")?
    }

    /// Creates a topic with a random name starting with `prefix`; returns the name.
    pub async fn unique_topic(&self, prefix: &str, partitions: i32) -> anyhow::Result<String> {
        let name = crate::kafka::random_name(prefix);
        self.create_topic(&name, partitions).await?;
        Ok(name)
    }
}

fn wait_for_topic(brokers: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .context("creating a metadata client")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = consumer.fetch_metadata(Some(name), Duration::from_secs(5));
        let mut last = String::from("no answer");
        if let Err(error) = &metadata {
            last = error.to_string();
        }
        if let Ok(metadata) = &metadata {
            let ready = metadata.topics().iter().any(|t| {
                t.name() == name && t.error().is_none() && t.partitions().len() == partitions as usize
            });
            if ready {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("topic {name} has not {partitions} partitions after 30 s ({last})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
