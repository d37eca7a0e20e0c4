//! The subcommands behind `main.rs`: each returns a [`CliError`] carrying the exit code
//! (2 for usage and configuration, 1 for runtime failures) and one line for stderr.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use unimod_ingest::record::RecordKind;

use crate::config::{Config, LogFormat};

/// A failed command: exit code and a one-line message.
#[derive(Debug)]
pub struct CliError {
    code: u8,
    message: String,
}

impl CliError {
    /// Bad usage or configuration (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self { code: 2, message: one_line(&message.into()) }
    }

    /// A runtime failure (exit 1).
    pub fn runtime(e: impl Into<anyhow::Error>) -> Self {
        Self { code: 1, message: one_line(&format!("{:#}", e.into())) }
    }

    /// The exit code.
    pub fn code(&self) -> u8 {
        self.code
    }

    /// The message (one line).
    pub fn message(&self) -> &str {
        &self.message
    }
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// `--kind` of `unimod produce`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    /// Text-only JSONL.
    Text,
    /// Image files/folders (raw bytes) or JSONL.
    Image,
    /// Pairs JSONL.
    Pair,
}

impl From<KindArg> for RecordKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Text => RecordKind::Text,
            KindArg::Image => RecordKind::Image,
            KindArg::Pair => RecordKind::Pair,
        }
    }
}

/// Loads the config, mapping errors to exit code 2, and sizes the CPU backend's threads
/// (`train.threads`) before anything computes.
pub fn load_config(path: &Path) -> Result<Config, CliError> {
    let config = Config::load(path).map_err(|e| CliError::usage(format!("config error: {e}")))?;
    set_cpu_threads(config.train.threads);
    Ok(config)
}

/// `train.threads` for burn's ndarray backend: the size of rayon's global pool (its
/// element-wise kernels) and of matrixmultiply's pool (`MATMUL_NUM_THREADS`, which matrixmultiply
/// caps at 4; an explicit environment value wins). 0 = every core. Must run before the first
/// tensor operation and before other threads read the environment: `load_config` runs first
/// in every command, on the main thread, before the tokio runtime exists.
fn set_cpu_threads(threads: usize) {
    let n = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        std::env::set_var("MATMUL_NUM_THREADS", n.to_string());
    }
    // Fails only when the pool already exists (a second call in one process): keep it.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("unimod-cpu-{i}"))
        .build_global();
}

/// Sets up tracing: human on a terminal, JSON otherwise (or as configured).
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}

/// How long leftover blocking tasks may delay the exit after a command finished.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(3);

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("unimod-io")
        .build()
        .map_err(CliError::runtime)
}

/// `unimod check-config`.
pub fn check_config(path: &Path) -> Result<(), CliError> {
    let config = load_config(path)?;
    // A GPU device: is its adapter here? (The build was checked by `load_config`.)
    let device = crate::config::parse_device(&config.train.device).map_err(CliError::usage)?;
    if device != crate::config::DeviceChoice::Cpu {
        match unimod_model::backend::probe(device) {
            Ok(adapter) => eprintln!("unimod: train.device = {:?}: adapter present: {}", config.train.device, adapter.name),
            Err(e) => {
                return Err(CliError::usage(format!(
                    "config error: train.device = {:?}: no usable adapter: {e}",
                    config.train.device
                )))
            }
        }
    }
    print!("{}", config.to_toml());
    Ok(())
}

/// `unimod run`.
pub fn run(path: &Path, max_steps: Option<u64>, max_seconds: Option<u64>) -> Result<(), CliError> {
    let config = load_config(path)?;
    init_logging(config.log.format, &config.log.level);
    let shutdown = CancellationToken::new();
    let opts = crate::run::RunOptions { max_steps, max_seconds: max_seconds.map(Duration::from_secs) };
    // block_on: a blocking call stuck in a client library (a commit to an unresponsive
    // broker) must not keep the process alive after the drain.
    block_on(async {
        spawn_signal_handler(shutdown.clone());
        crate::run::run(config, opts, shutdown).await.map_err(|e| match e.downcast::<crate::run::StartupError>() {
            Ok(s) => CliError::usage(s.to_string()),
            Err(e) => CliError::runtime(e),
        })
    })
}

/// First SIGTERM/SIGINT: cancel (drain). Second: exit at once.
fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let name = tokio::select! { _ = term.recv() => "SIGTERM", _ = int.recv() => "SIGINT" };
        tracing::info!(signal = name, "shutdown requested: draining (send again to exit at once)");
        shutdown.cancel();
        let name = tokio::select! { _ = term.recv() => "SIGTERM", _ = int.recv() => "SIGINT" };
        tracing::warn!(signal = name, "second signal: exiting without draining");
        std::process::exit(130);
    });
}

/// `unimod produce` (needs no configuration file).
pub fn produce(brokers: &str, kind: KindArg, topic: Option<String>, inputs: &[PathBuf]) -> Result<(), CliError> {
    init_logging(LogFormat::Human, "warn");
    block_on(crate::commands::produce::produce(brokers, kind.into(), topic, inputs))
}

/// The frame of every offline command (`eval`, `embed`, `caption`, `generate`, `checkpoint
/// ...`): loads the configuration (exit 2 naming the key), logs warnings only (stdout is the
/// command's output), then runs `command`.
pub fn offline<T>(config: &Path, command: impl FnOnce(Config) -> Result<T, CliError>) -> Result<T, CliError> {
    let config = load_config(config)?;
    init_logging(LogFormat::Human, "warn");
    command(config)
}

/// Runs an async command on a fresh runtime and gives leftover blocking tasks (a client
/// library's call to an unresponsive broker) [`RUNTIME_SHUTDOWN`] to end before returning.
pub fn block_on<T>(command: impl std::future::Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    let rt = runtime()?;
    let result = rt.block_on(command);
    rt.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}
