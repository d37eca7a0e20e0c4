//! `unimod run`: the long-running service. Wires Kafka -> preprocessing -> feeder -> trainer
//! thread -> checkpoint writer -> offset commits, plus HTTP, systemd notifications and the
//! drain on shutdown.
//!
//! Shutdown order (within `shutdown.drain_seconds`), each stage logged:
//! 1. `/readyz` turns 503 and systemd gets `STOPPING=1`;
//! 2. stop consuming (consumer and preprocessing stop at once; queued records, whatever the
//!    backlog, and dead-letter copies still under way are abandoned and will be consumed
//!    again after the restart, since their offsets are not in any checkpoint);
//! 3. the trainer finishes the step in flight (no new one starts) and writes the final
//!    checkpoint durably;
//! 4. offsets of that checkpoint are committed to the consumer group;
//! 5. the consumer is closed (bounded by what is left of the budget); the HTTP server stops
//!    last (bounded by [`HTTP_STOP_WAIT`]).
//!
//! A rollback (too many non-finite steps) runs stages 2-5 without a final checkpoint and
//! starts a new session from the newest valid checkpoint, in the same process.
//!
//! A session reads as its stages: `start` restores the newest valid checkpoint or starts a
//! new lineage (tokenizer, model config, device); `pipeline` wires consumer,
//! preprocessing, feeder, trainer thread, checkpoint writer and committer into a
//! `Pipeline` that owns them, and drains them in the order above.

mod pipeline;
mod start;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use burn::tensor::backend::AutodiffBackend;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use unimod_ingest::kafka::{DeadLetterProducer, KafkaMetrics, TopicCheck};
use unimod_ingest::telemetry::IngestMetrics;

use crate::access::StoreSource;
use crate::checkpoint::CheckpointStore;
use crate::config::{parse_device, Config, DeviceChoice};
use crate::health::{Health, Lifecycle, Phase};
use crate::notify::Notifier;
use crate::telemetry::Metrics;
use crate::train::worker::WorkerExit;

pub(crate) use start::train_settings;

use pipeline::Pipeline;

/// How long the tokenizer bootstrap waits for texts on an empty or slow stream.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the HTTP server gets to finish its requests once the drain is over.
pub const HTTP_STOP_WAIT: Duration = Duration::from_secs(5);

/// Bounds of one `run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this many optimizer steps.
    pub max_steps: Option<u64>,
    /// Stop after this long.
    pub max_seconds: Option<Duration>,
}

/// A start-up problem caused by the configuration (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

/// Everything a session shares with the next one (after a rollback).
struct Shared {
    config: Config,
    opts: RunOptions,
    metrics: Metrics,
    ingest_metrics: IngestMetrics,
    kafka_metrics: KafkaMetrics,
    lifecycle: Lifecycle,
    store: Arc<CheckpointStore>,
    progress: Arc<AtomicU64>,
    deadline: Option<Instant>,
    serve: Option<(crate::serve::SnapshotSlot, crate::serve::ServeMetrics)>,
}

enum SessionEnd {
    Done,
    /// Too many non-finite steps: restart from the newest valid checkpoint. Names the
    /// checkpoint this session started from (and its offsets) so that a second rollback to the
    /// same place is not a silent loop.
    Rollback { from: Option<u64>, offsets: String },
}

/// Runs the daemon until `shutdown` is cancelled (then drains) or a bound is reached.
pub async fn run(config: Config, opts: RunOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let device = parse_device(&config.train.device).map_err(|e| StartupError(format!("train.device: {e}")))?;
    let backend = device.backend();
    // The adapter, before anything else touches the device: a build without the backend, or
    // a machine without the adapter, stops here with one line naming the key.
    let adapter = unimod_model::backend::probe(device)
        .map_err(|e| StartupError(format!("train.device = {:?}: {e}", config.train.device)))?;
    tracing::info!(device = %device, backend, fusion = device.fusion(), adapter = %adapter.name, "training device");
    let registry = Registry::new();
    let metrics = Metrics::register(&registry, backend, device.fusion()).context("registering metrics")?;
    let ingest_metrics = IngestMetrics::new(&registry).context("registering ingest metrics")?;
    let kafka_metrics = KafkaMetrics::register(&registry).context("registering Kafka metrics")?;
    let health = Arc::new(Health::default());
    let lifecycle = Lifecycle::new(Arc::clone(&health), metrics.ready.clone(), Notifier::from_env());
    let store = Arc::new(
        CheckpointStore::open(&config.storage.path)
            .with_context(|| format!("opening storage.path = {}", config.storage.path.display()))?,
    );
    metrics.store_bytes.set(store.size_on_disk().unwrap_or(0) as i64);
    check_dead_letter_topic(&config, &shutdown).await?;

    // HTTP first (so /healthz answers while starting) and last (stopped after the drain).
    let http_stop = CancellationToken::new();
    let blob_token = crate::access::write_token(&config.storage.path)
        .map_err(|e| StartupError(format!("storage.path = {}: {e:#}", config.storage.path.display())))?;
    let (addr, http_task) = crate::http::serve(
        config.metrics.listen,
        registry.clone(),
        Arc::clone(&health),
        Some(Arc::new(StoreSource(Arc::clone(&store)))),
        Some(blob_token),
        http_stop.clone(),
    )
    .await?;
    tracing::info!(%addr, backend, "serving /metrics, /healthz, /readyz");

    let serve = match config.serve.listen {
        Some(listen) => {
            let slot = crate::serve::SnapshotSlot::default();
            let serve_metrics = crate::serve::ServeMetrics::register(&registry).context("registering serving metrics")?;
            let (addr, _task) =
                crate::serve::serve(listen, slot.clone(), serve_metrics.clone(), config.serve.clone(), http_stop.clone()).await?;
            tracing::info!(%addr, "serving /v1/embed, /v1/caption, /v1/generate");
            Some((slot, serve_metrics))
        }
        None => None,
    };
    let progress = Arc::new(AtomicU64::new(0));
    let watchdog = spawn_watchdog(lifecycle.notifier().clone(), Arc::clone(&progress), http_stop.clone());
    let shared = Shared {
        deadline: opts.max_seconds.map(|d| Instant::now() + d),
        config,
        opts,
        metrics,
        ingest_metrics,
        kafka_metrics,
        lifecycle: lifecycle.clone(),
        store,
        progress,
        serve,
    };
    let mut last_rollback: Option<Option<u64>> = None;
    let result = loop {
        let end = match device {
            DeviceChoice::Cpu => session::<unimod_model::CpuBackend>(&shared, Default::default(), &shutdown).await,
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda(_) => {
                let dev = device.cuda().expect("a CUDA device");
                session::<unimod_model::backend::CudaBackend>(&shared, dev, &shutdown).await
            }
            #[cfg(feature = "wgpu")]
            DeviceChoice::Wgpu(_) => {
                let dev = device.wgpu().expect("a wgpu device");
                session::<unimod_model::backend::WgpuBackend>(&shared, dev, &shutdown).await
            }
            #[allow(unreachable_patterns)]
            _ => unreachable!("probe rejects a device this build lacks"),
        };
        match end {
            Ok(SessionEnd::Rollback { from, offsets }) if !shutdown.is_cancelled() => {
                if last_rollback == Some(from) {
                    let from = from.map_or_else(|| "none (a new lineage)".to_owned(), |id| id.to_string());
                    break Err(anyhow::anyhow!(
                        "rolled back to checkpoint {from} (offsets {offsets}) twice in a row: the model keeps diverging from there; \
                         stopping instead of looping (lower train.learning_rate or restore an older checkpoint)"
                    ));
                }
                last_rollback = Some(from);
                tracing::warn!("restarting from the newest valid checkpoint");
                continue;
            }
            Ok(_) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    lifecycle.enter(Phase::Draining);
    // Stage 5: HTTP last, bounded.
    http_stop.cancel();
    let mut http_task = http_task;
    if tokio::time::timeout(HTTP_STOP_WAIT, &mut http_task).await.is_err() {
        tracing::warn!("HTTP requests still running after the drain; closing them");
        http_task.abort();
    }
    pipeline::settle("watchdog", watchdog.await);
    if result.is_ok() {
        tracing::info!("stopped cleanly");
    }
    result
}

/// Checks that `kafka.dead_letter_topic` (when set) exists: a missing or inaccessible topic
/// stops the start (exit 2) instead of stalling every rejected record later. Waits while the
/// broker does not answer (like the consumer would), until `shutdown`.
async fn check_dead_letter_topic(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let Some(topic) = config.kafka.dead_letter_topic.clone() else { return Ok(()) };
    let producer = DeadLetterProducer::new(&config.kafka)
        .map_err(|e| StartupError(format!("kafka.dead_letter_topic = {topic:?}: {e}")))?
        .ok_or_else(|| anyhow::anyhow!("no dead-letter producer despite kafka.dead_letter_topic"))?;
    let producer = Arc::new(producer);
    let timeout = config.kafka.request_timeout();
    let mut pause = Duration::from_millis(500);
    loop {
        let p = Arc::clone(&producer);
        let checked = tokio::task::spawn_blocking(move || p.check_topic(timeout))
            .await
            .context("checking the dead-letter topic")?;
        match checked {
            Ok(partitions) => {
                tracing::info!(topic = %topic, partitions, "dead-letter topic found");
                return Ok(());
            }
            Err(TopicCheck::Unusable(why)) => {
                return Err(StartupError(format!("kafka.dead_letter_topic = {topic:?}: {why}")).into());
            }
            Err(TopicCheck::NoAnswer(why)) => {
                tracing::warn!(topic = %topic, error = %why, "cannot check the dead-letter topic yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// `WATCHDOG=1` at half of `WATCHDOG_USEC`, only while the trainer loop moves.
fn spawn_watchdog(notifier: Notifier, progress: Arc<AtomicU64>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(interval) = notifier.watchdog_interval() else { return };
        let mut last = u64::MAX;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let now = progress.load(Ordering::Relaxed);
            if now != last && now != 0 {
                notifier.watchdog();
            } else if now != 0 {
                tracing::warn!("trainer loop made no progress for a watchdog interval; not pinging");
            }
            last = now;
        }
    })
}

/// One session, in three stages: restore or start (`start::restore_or_start`), wire the
/// `Pipeline` and run it until a shutdown request or the trainer's end, then drain it in
/// its fixed order (`Pipeline::drain`).
async fn session<B: AutodiffBackend>(
    shared: &Shared,
    device: B::Device,
    shutdown: &CancellationToken,
) -> anyhow::Result<SessionEnd> {
    shared.lifecycle.enter(Phase::Starting);
    let start = start::restore_or_start::<B>(&shared.config, &shared.store, device).await?;
    let (restored_from, restored_offsets) = (start.restored_from, start.restored_offsets.clone());
    let mut pipeline = Pipeline::wire(shared, start)?;

    // Ready: consuming and training (readiness also needs the broker; see the monitor).
    shared.lifecycle.enter(Phase::Running);
    pipeline.monitor_readiness(shared);

    let shutdown_requested = pipeline.wait(shutdown).await;
    let checkpoint_failures = pipeline.checkpoint_failures();
    let exit = pipeline.drain(shared, shutdown_requested).await?;
    let config = &shared.config;
    match exit {
        WorkerExit::Rollback => Ok(SessionEnd::Rollback { from: restored_from, offsets: restored_offsets }),
        WorkerExit::CheckpointsFailing => anyhow::bail!(
            "{} checkpoint writes in a row failed (storage.path = {}, storage.max_failed_checkpoints = {}); \
             stopping; the newest durable checkpoint stays valid",
            checkpoint_failures.load(Ordering::Relaxed),
            config.storage.path.display(),
            config.storage.max_failed_checkpoints
        ),
        WorkerExit::BoundReached => Ok(SessionEnd::Done),
        WorkerExit::Stopped if shutdown_requested => Ok(SessionEnd::Done),
        WorkerExit::Stopped => anyhow::bail!("the input stream ended unexpectedly (consumer stopped)"),
    }
}
