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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use burn::tensor::backend::AutodiffBackend;
use prometheus::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use unimod_ingest::kafka::{bootstrap_texts, DeadLetterProducer, KafkaMetrics, TopicCheck};
use unimod_ingest::fetch::ImageFetcher;
use unimod_ingest::offsets::PartitionOffsets;
use unimod_ingest::preprocess::{bootstrap_text, Outcome, Preprocessor, Processed};
use unimod_ingest::record::RecordKind;
use unimod_ingest::reject::{RejectReason, Rejection};
use unimod_ingest::telemetry::IngestMetrics;
use unimod_ingest::text::TextTokenizer;
use unimod_model::{Trainer, TrainSettings};

use crate::access::StoreSource;
use crate::checkpoint::CheckpointStore;
use crate::checkpoint_io::{spawn_writer, Durable, Restored};
use crate::config::{parse_device, Config, DeviceChoice};
use crate::dead_letter::DeadLetters;
use crate::health::{Health, Phase};
use crate::notify::Notifier;
use crate::telemetry::Metrics;
use crate::train::cmcl::CmclData;
use crate::train::lineage::{Lineage, RecordCounts};
use crate::train::replay::ReplayBuffers;
use crate::train::schedule::Schedule;
use crate::train::worker::{Event, Worker, WorkerExit, WorkerParams};

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
    health: Arc<Health>,
    notifier: Notifier,
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
    let notifier = Notifier::from_env();
    notifier.status("starting");
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
    let watchdog = spawn_watchdog(notifier.clone(), Arc::clone(&progress), http_stop.clone());
    let shared = Shared {
        deadline: opts.max_seconds.map(|d| Instant::now() + d),
        config,
        opts,
        metrics,
        ingest_metrics,
        kafka_metrics,
        health: Arc::clone(&health),
        notifier: notifier.clone(),
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
    health.set_phase(Phase::Draining);
    shared.metrics.ready.set(0);
    notifier.stopping();
    // Stage 5: HTTP last, bounded.
    http_stop.cancel();
    let mut http_task = http_task;
    if tokio::time::timeout(HTTP_STOP_WAIT, &mut http_task).await.is_err() {
        tracing::warn!("HTTP requests still running after the drain; closing them");
        http_task.abort();
    }
    let _ = watchdog.await;
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

pub(crate) fn train_settings(config: &Config) -> TrainSettings {
    let t = &config.train;
    TrainSettings {
        text_buckets: t.text_buckets.clone(),
        object_buckets: t.object_buckets.clone(),
        weight_decay: t.weight_decay,
        max_grad_norm: t.max_grad_norm,
        seed: t.seed,
        // The JIT backends compile per shape: pad row and target counts to a few sizes.
        shape_policy: match parse_device(&t.device) {
            Ok(DeviceChoice::Cpu) | Err(_) => unimod_model::ShapePolicy::Tight,
            Ok(_) => unimod_model::ShapePolicy::Static,
        },
        ..TrainSettings::default()
    }
}

/// Builds the model config for a new lineage from `[model]`, the tokenizer and the image
/// feature width.
fn new_model_config(config: &Config, tokenizer: &TextTokenizer) -> anyhow::Result<unimod_model::ModelConfig> {
    let m = &config.model;
    let sp = tokenizer.special();
    let special = unimod_model::SpecialTokens { pad: sp.pad, cls: sp.cls, sep: sp.sep, mask: sp.mask, img: sp.img };
    let arch = m.arch;
    let feature_dim = m.feature_dim.unwrap_or_else(|| config.image.feature_dim());
    let vocab = tokenizer.vocab_size();
    let mut mc = if m.size == "custom" {
        unimod_model::ModelConfig::custom(
            arch,
            m.layers.unwrap_or(0),
            m.hidden.unwrap_or(0),
            m.heads.unwrap_or(0),
            vocab,
            feature_dim,
            special,
        )
    } else {
        unimod_model::ModelConfig::preset(arch, &m.size, vocab, feature_dim, special)
    }
    .map_err(|e| StartupError(format!("model: {e}")))?;
    mc.dropout = m.dropout;
    mc.pre_ln = m.pre_ln;
    mc.max_text_len = tokenizer.max_length().max(*config.train.text_buckets.last().unwrap_or(&2));
    mc.max_objects = *config.train.object_buckets.last().unwrap_or(&1);
    mc.weights = m.weights;
    mc.continuation = m.continuation;
    mc.validate().map_err(|e| StartupError(format!("model: {e}")))?;
    Ok(mc)
}

/// The tokenizer of a new lineage: `text.tokenizer_path`, or a BPE trained on a bootstrap
/// sample of the stream's texts and captions (stored with every checkpoint afterwards).
async fn new_tokenizer(config: &Config) -> anyhow::Result<TextTokenizer> {
    if config.text.tokenizer_path.is_some() {
        return TextTokenizer::from_config::<String>(&config.text, &[])
            .map_err(|e| StartupError(format!("text.tokenizer_path: {e}")).into());
    }
    let n = config.text.bootstrap_records;
    tracing::info!(records = n, "no checkpoint and no tokenizer: training one on a sample of the stream");
    let payloads = bootstrap_texts(&config.kafka, n, BOOTSTRAP_TIMEOUT)
        .await
        .context("reading the tokenizer bootstrap sample")?;
    let texts: Vec<String> = payloads
        .iter()
        .filter_map(|p| {
            bootstrap_text(RecordKind::Text, Some(p)).or_else(|| bootstrap_text(RecordKind::Pair, Some(p)))
        })
        .collect();
    tracing::info!(texts = texts.len(), "training the tokenizer");
    let tokenizer = tokio::task::spawn_blocking({
        let cfg = config.text.clone();
        move || TextTokenizer::from_config(&cfg, &texts)
    })
    .await
    .context("tokenizer training panicked")?
    .context("training the tokenizer")?;
    Ok(tokenizer)
}

async fn session<B: AutodiffBackend>(
    shared: &Shared,
    device: B::Device,
    shutdown: &CancellationToken,
) -> anyhow::Result<SessionEnd> {
    let config = &shared.config;
    shared.health.set_phase(Phase::Starting);
    shared.metrics.ready.set(0);

    // Restore the newest checkpoint that verifies (corrupt newer ones are skipped with a
    // warning by the store).
    let restored = {
        let store = Arc::clone(&shared.store);
        tokio::task::spawn_blocking(move || store.load_latest_valid())
            .await
            .context("checkpoint loading panicked")?
            .context("reading the checkpoint store")?
    };
    let restored = match restored {
        Some((meta, mut blobs)) => Some(Restored::from_blobs(meta, |name| blobs.take(name))?),
        None => None,
    };
    let tokenizer = match &restored {
        Some(r) => TextTokenizer::from_json(&r.tokenizer_json, config.text.max_length)
            .context("loading the checkpoint's tokenizer")?,
        None => match crate::warm_start::tokenizer(config)? {
            Some(t) => t,
            None => new_tokenizer(config).await?,
        },
    };
    let tokenizer = Arc::new(tokenizer);
    let settings = train_settings(config);
    let trainer: Trainer<B> = match &restored {
        Some(r) => {
            let t = Trainer::load(&r.trainer, settings, device).map_err(|e| anyhow::anyhow!("loading checkpoint {}: {e}", r.meta.id))?;
            let arch = t.config().arch.as_str();
            let want = config.model.arch.as_str();
            if arch != want {
                return Err(StartupError(format!(
                    "model.arch = {want:?} but the store's checkpoint {} holds a {arch:?} model (use another storage.path)",
                    r.meta.id
                ))
                .into());
            }
            tracing::info!(
                checkpoint = r.meta.id,
                step = r.meta.step,
                text = r.meta.records.text,
                image = r.meta.records.image,
                pair = r.meta.records.pair,
                rejected = r.meta.records.rejected,
                "resuming from checkpoint"
            );
            t
        }
        None if config.model.init_from.is_some() => {
            let fresh = || new_model_config(config, &tokenizer);
            crate::warm_start::trainer::<B>(config, &tokenizer, fresh, settings, device)?
                .expect("init_from is set")
        }
        None => {
            let mc = new_model_config(config, &tokenizer)?;
            tracing::info!(arch = mc.arch.as_str(), size = %mc.size, vocab = mc.vocab_size, feature_dim = mc.feature_dim, "starting a new lineage");
            Trainer::new(mc, settings, device).map_err(|e| StartupError(format!("model: {e}")))?
        }
    };
    let feature_dim = trainer.config().feature_dim;
    let model_size = trainer.config().size.clone();
    let use_cmcl = trainer.config().arch == unimod_model::Arch::Unimo && config.model.weights.cmcl > 0.0;
    let (step, counts, progress_offsets, replay) = match &restored {
        Some(r) => (
            r.meta.step,
            r.counts(),
            r.progress(),
            ReplayBuffers::decode(&r.replay, config.train.replay_capacity, config.train.seed ^ r.meta.step)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "replay buffer not restored; starting empty");
                    ReplayBuffers::new(config.train.replay_capacity, config.train.seed)
                }),
        ),
        None => (0, RecordCounts::default(), Vec::new(), ReplayBuffers::new(config.train.replay_capacity, config.train.seed)),
    };
    let start_offsets = PartitionOffsets::start_offsets(&progress_offsets);
    let mut lineage = Lineage::restore(counts, &progress_offsets);
    let tokenizer_json = Arc::new(tokenizer.to_json().context("serialising the tokenizer")?);

    // The pipeline: consumer -> per-kind preprocessing -> mixer -> feeder -> trainer thread
    // (see `intake`). Nothing is pending at the start of a session: records queued by an
    // earlier one were abandoned and will be consumed again.
    shared.kafka_metrics.pending_reset();
    let consume_stop = CancellationToken::new();
    let fetcher = ImageFetcher::new(&config.fetch, Some(shared.ingest_metrics.clone()))
        .context("building the image fetcher")?;
    let preprocessor = Preprocessor::new(
        &config.preprocess,
        &config.image,
        Arc::clone(&tokenizer),
        fetcher,
        Some(shared.ingest_metrics.clone()),
    )
    .context("starting preprocessing")?;
    let intake = crate::intake::start(
        &config.kafka,
        start_offsets,
        preprocessor,
        shared.kafka_metrics.clone(),
        crate::intake::IntakeParams {
            max_in_flight: config.preprocess.max_in_flight,
            output_capacity: config.train.batch_size,
            weights: [config.train.mix.text, config.train.mix.image, config.train.mix.pair],
            seed: config.train.seed ^ step,
        },
        consume_stop.clone(),
    )
    .context("starting the Kafka consumer")?;
    let consumer = intake.consumer;
    let processed_rx = intake.processed;
    // Ends when the consumer stopped and everything queued went through.
    let pipeline = intake.task;
    let topic_kinds: Vec<(String, RecordKind)> =
        RecordKind::ALL.into_iter().map(|k| (config.kafka.topics.topic(k).to_owned(), k)).collect();
    lineage.link(shared.kafka_metrics.clone(), &topic_kinds, consumer.reset_feed());
    let dead_letter = DeadLetterProducer::new(&config.kafka).context("starting the dead-letter producer")?;
    let dlq_stop = CancellationToken::new();
    let dead_letters = DeadLetters::new(
        dead_letter,
        Duration::from_secs_f64(config.kafka.dead_letter_retry_seconds),
        shared.metrics.clone(),
        dlq_stop.clone(),
    );
    let (event_tx, event_rx) = mpsc::channel(config.train.queue_capacity);
    let feeder = tokio::spawn(feed(
        processed_rx,
        event_tx,
        dead_letters.clone(),
        shared.metrics.clone(),
        shared.ingest_metrics.clone(),
        feature_dim,
    ));

    // Checkpoints: writer thread + committer.
    let (durable_tx, mut durable_rx) = mpsc::channel::<Durable>(8);
    let checkpoint_failures = Arc::new(AtomicU64::new(0));
    let (sink, writer) = spawn_writer(
        Arc::clone(&shared.store),
        config.storage.keep_checkpoints,
        model_size,
        shared.metrics.clone(),
        durable_tx,
        Arc::clone(&checkpoint_failures),
    )?;
    let committer = {
        let consumer = Arc::clone(&consumer);
        tokio::spawn(async move {
            while let Some(d) = durable_rx.recv().await {
                match consumer.commit(&d.offsets).await {
                    Ok(()) => tracing::debug!(checkpoint = d.id, "offsets committed to the consumer group"),
                    Err(e) => tracing::warn!(checkpoint = d.id, error = %e, "offset commit failed (the checkpoint is durable; will commit with the next one)"),
                }
            }
        })
    };

    // The trainer thread.
    // After a rollback the step bound counts again from the restored checkpoint.
    let steps_left = shared.opts.max_steps;
    let t = &config.train;
    let params = WorkerParams {
        batch_size: t.batch_size,
        grad_accumulation: t.grad_accumulation,
        replay_ratio: t.replay_ratio,
        mix: [t.mix.text, t.mix.image, t.mix.pair],
        lookahead: t.queue_capacity,
        max_batch_wait: Duration::from_millis(t.max_batch_wait_ms),
        checkpoint_every_steps: config.storage.checkpoint_every_steps,
        checkpoint_every: (config.storage.checkpoint_every_seconds > 0)
            .then(|| Duration::from_secs(config.storage.checkpoint_every_seconds)),
        max_steps: steps_left,
        deadline: shared.deadline,
        max_nonfinite_in_row: t.max_nonfinite_in_row,
        // Unready at N failures in a row, stop at 2N.
        max_failed_checkpoints: config.storage.max_failed_checkpoints.saturating_mul(2),
    };
    let restored_from = restored.as_ref().map(|r| r.meta.id);
    let restored_offsets = restored.as_ref().map_or_else(String::new, |r| {
        r.meta.offsets.iter().map(|p| format!("{}@{}", p.tp, p.next_offset)).collect::<Vec<_>>().join(", ")
    });
    let worker = Worker {
        schedule: Schedule::new(t.learning_rate, t.warmup_steps, t.rewarm_steps, restored.as_ref().map(|_| step)),
        cmcl: use_cmcl.then(|| CmclData::new(config.cmcl.clone(), Arc::clone(&tokenizer), t.seed ^ step, shared.metrics.cmcl.clone())),
        trainer,
        lineage,
        replay,
        step,
        tokenizer_json,
        params,
        metrics: shared.metrics.clone(),
        sink,
        progress: Arc::clone(&shared.progress),
        generation: 0,
        checkpointed_generation: 0,
        dead_letters,
        ingest_metrics: shared.ingest_metrics.clone(),
        checkpoint_failures_in_row: Arc::clone(&checkpoint_failures),
        snapshot: match &shared.serve {
            Some((slot, serve_metrics)) => {
                let mut prep = config.preprocess.clone();
                prep.threads = 1;
                let fetcher = ImageFetcher::new(&config.fetch, None).context("building the serving image fetcher")?;
                let preprocessor = Preprocessor::new(&prep, &config.image, Arc::clone(&tokenizer), fetcher, None)
                    .context("starting serving preprocessing")?;
                let hook = crate::serve::snapshot_hook::<B>(slot.clone(), Arc::clone(&tokenizer), preprocessor, serve_metrics.clone());
                Some((config.serve.refresh_steps, hook))
            }
            None => None,
        },
    };
    let worker_stop = CancellationToken::new();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let worker_thread = {
        let rt = tokio::runtime::Handle::current();
        let stop = worker_stop.clone();
        std::thread::Builder::new()
            .name("trainer".into())
            .spawn(move || {
                let r = worker.run(rt, event_rx, stop);
                let _ = done_tx.send(());
                r
            })
            .context("starting the trainer thread")?
    };

    // Ready: consuming and training (readiness also needs the broker; see the monitor).
    shared.health.set_phase(Phase::Running);
    shared.notifier.ready();
    let monitor = {
        let consumer = Arc::clone(&consumer);
        let health = Arc::clone(&shared.health);
        let metrics = shared.metrics.clone();
        let stop = consume_stop.clone();
        let failures = Arc::clone(&checkpoint_failures);
        let unready_at = u64::from(config.storage.max_failed_checkpoints);
        tokio::spawn(async move {
            loop {
                let ok = consumer.connected();
                health.set_kafka_ok(ok);
                health.set_checkpoints_failing(unready_at > 0 && failures.load(Ordering::Relaxed) >= unready_at);
                metrics.ready.set(i64::from(health.not_ready_reason().is_none()));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        })
    };

    // Wait for a shutdown request or the trainer ending on its own.
    let shutdown_requested = tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = &mut done_rx => false,
    };
    let budget = Duration::from_secs(config.shutdown.drain_seconds);
    let drain_started = Instant::now();
    let drain = async {
        if shutdown_requested {
            // Stage 1.
            shared.health.set_phase(Phase::Draining);
            shared.metrics.ready.set(0);
            shared.notifier.stopping();
            tracing::info!("drain 1/5: not ready");
        }
        // Stage 2: stop consuming, whatever is queued: the records waiting in the queues and
        // the dead-letter copies under way are abandoned (not finished, so not in the final
        // checkpoint: consumed again after the restart). The trainer starts no new step.
        consume_stop.cancel();
        dlq_stop.cancel();
        worker_stop.cancel();
        pipeline.abort();
        feeder.abort();
        let _ = pipeline.await;
        let _ = feeder.await;
        let _ = monitor.await;
        tracing::info!(ms = drain_started.elapsed().as_millis() as u64, "drain 2/5: consumption stopped");
        // Stage 3: the trainer finishes its step and writes the final checkpoint.
        let exit = tokio::task::spawn_blocking(move || worker_thread.join())
            .await
            .context("joining the trainer thread")?
            .map_err(|_| anyhow::anyhow!("the trainer thread panicked"))??;
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .context("joining the checkpoint writer")?
            .map_err(|_| anyhow::anyhow!("the checkpoint writer panicked"))?;
        tracing::info!(?exit, ms = drain_started.elapsed().as_millis() as u64, "drain 3/5: trainer stopped");
        // Stage 4: the committer drains the last durable notifications.
        let _ = committer.await;
        tracing::info!(ms = drain_started.elapsed().as_millis() as u64, "drain 4/5: offsets committed");
        // Stage 5 (the consumer closes; HTTP stops in `run`), within what is left.
        let left = budget.saturating_sub(drain_started.elapsed() + Duration::from_millis(500));
        match Arc::try_unwrap(consumer) {
            Ok(c) => {
                if tokio::time::timeout(left, c.shutdown()).await.is_err() {
                    tracing::warn!("closing the consumer took too long; dropping it");
                }
            }
            Err(_) => tracing::warn!("consumer still referenced; closing it on drop"),
        }
        // Records still queued were abandoned: they will be consumed again.
        shared.kafka_metrics.pending_reset();
        tracing::info!(ms = drain_started.elapsed().as_millis() as u64, "drain 5/5: consumer closed");
        anyhow::Ok(exit)
    };
    let exit = match tokio::time::timeout(budget, drain).await {
        Ok(r) => r?,
        Err(_) => anyhow::bail!(
            "drain exceeded shutdown.drain_seconds = {}; exiting without a final checkpoint (the previous one stays valid)",
            budget.as_secs()
        ),
    };
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

/// Forwards preprocessed records to the trainer in order. Rejections (already counted by
/// reason and logged by the preprocessor) are counted per kind and their dead-letter copy is
/// started off this path: the trainer finishes such a record when its copy has ended, and
/// every other record goes on meanwhile.
async fn feed(
    mut processed: mpsc::Receiver<Processed>,
    events: mpsc::Sender<Event>,
    dead_letters: DeadLetters,
    metrics: Metrics,
    ingest_metrics: IngestMetrics,
    feature_dim: usize,
) {
    while let Some(p) = processed.recv().await {
        let kind = p.raw.kind;
        let outcome = match p.outcome {
            Outcome::Ready(s) if s.image.as_ref().is_some_and(|o| o.dim != feature_dim) => {
                let dim = s.image.as_ref().map_or(0, |o| o.dim);
                let r = Rejection::new(
                    RejectReason::InvalidRegions,
                    format!("region feature width {dim} differs from the model's {feature_dim}"),
                );
                ingest_metrics.record_rejected(kind, r.reason);
                tracing::warn!(pos = %p.raw.pos, reason = %r, "record rejected");
                Outcome::Rejected(r)
            }
            o => o,
        };
        let event = match outcome {
            Outcome::Ready(sample) => Event::Ready(sample),
            Outcome::Rejected(r) => {
                metrics.records.with_label_values(&[kind.as_str(), "rejected"]).inc();
                let pos = p.raw.pos.clone();
                let copied = dead_letters.copy(p.raw, r.reason.as_str(), r.detail).await;
                Event::Rejected { kind, pos, copied }
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}
