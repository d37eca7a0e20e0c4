//! Stage 2 and 3 of a session: the [`Pipeline`] of tasks and threads that consume, preprocess,
//! feed, train and checkpoint, and its [`drain`](Pipeline::drain) in a fixed order.
//!
//! ```text
//! consumer -> preprocessing (per kind) -> mixer      (crate::intake)
//!   -> feeder (rejections: dead-letter copies)       (feed)
//!   -> trainer thread                                (crate::train::worker)
//!   -> checkpoint writer thread -> committer         (crate::checkpoint::writer)
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use burn::tensor::backend::AutodiffBackend;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use unimod_ingest::fetch::ImageFetcher;
use unimod_ingest::kafka::{DeadLetterProducer, KafkaConsumer};
use unimod_ingest::preprocess::{Outcome, Preprocessor, Processed};
use unimod_ingest::record::RecordKind;

use super::start::Start;
use super::Shared;
use crate::checkpoint::{spawn_writer, Durable};
use crate::dead_letter::DeadLetters;
use crate::health::Phase;
use crate::telemetry::Metrics;
use crate::train::cmcl::CmclData;
use crate::train::schedule::Schedule;
use crate::train::worker::{Event, Worker, WorkerExit, WorkerParams};

/// The running parts of a session. Built by [`Pipeline::wire`], stopped by
/// [`Pipeline::drain`]; every task and thread it starts is joined there.
pub(super) struct Pipeline {
    consumer: Arc<KafkaConsumer>,
    /// Stops the consumer (and with it preprocessing) and the health monitor.
    consume_stop: CancellationToken,
    /// Abandons the dead-letter copies still under way.
    dlq_stop: CancellationToken,
    /// The trainer starts no new step.
    worker_stop: CancellationToken,
    /// Consumer -> preprocessing -> mixer; ends when the consumer stopped and everything
    /// queued went through.
    intake: JoinHandle<()>,
    /// Mixer -> trainer thread.
    feeder: JoinHandle<()>,
    /// Commits the offsets of each durable checkpoint to the consumer group.
    committer: JoinHandle<()>,
    /// Readiness from broker health and checkpoint failures; started once the session runs.
    monitor: Option<JoinHandle<()>>,
    trainer: std::thread::JoinHandle<anyhow::Result<WorkerExit>>,
    /// Fires when the trainer thread ends on its own.
    trainer_done: oneshot::Receiver<()>,
    writer: std::thread::JoinHandle<()>,
    /// Consecutive failed checkpoint writes.
    checkpoint_failures: Arc<AtomicU64>,
}

impl Pipeline {
    /// Starts consumer, preprocessing, feeder, checkpoint writer, committer and the trainer
    /// thread for `start`. Nothing is pending at the start of a session: records queued by an
    /// earlier one were abandoned and will be consumed again.
    pub(super) fn wire<B: AutodiffBackend>(shared: &Shared, start: Start<B>) -> anyhow::Result<Self> {
        let config = &shared.config;
        let Start { restored_from, trainer, tokenizer, tokenizer_json, step, mut lineage, replay, start_offsets, .. } = start;
        let feature_dim = trainer.config().feature_dim;
        let model_size = trainer.config().size.clone();
        let use_cmcl = trainer.config().arch == unimod_model::Arch::Unimo && config.model.weights.resolve(trainer.config().arch).cmcl > 0.0;

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
        .context("starting preprocessing")?
        .with_feature_dim(feature_dim);
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
            intake.processed,
            event_tx,
            dead_letters.clone(),
            shared.metrics.clone(),
        ));

        // Checkpoints: writer thread + committer.
        let (durable_tx, durable_rx) = mpsc::channel::<Durable>(8);
        let checkpoint_failures = Arc::new(AtomicU64::new(0));
        let (sink, writer) = spawn_writer(
            Arc::clone(&shared.store),
            config.storage.keep_checkpoints,
            model_size,
            shared.metrics.clone(),
            durable_tx,
            Arc::clone(&checkpoint_failures),
        )?;
        let committer = tokio::spawn(commit_durable(Arc::clone(&consumer), durable_rx));

        // The trainer thread. After a rollback the step bound counts again from the restored
        // checkpoint.
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
            max_steps: shared.opts.max_steps,
            deadline: shared.deadline,
            max_nonfinite_in_row: t.max_nonfinite_in_row,
            // Unready at N failures in a row, stop at 2N.
            max_failed_checkpoints: config.storage.max_failed_checkpoints.saturating_mul(2),
        };
        let resumed = restored_from.is_some();
        let worker = Worker {
            schedule: Schedule::new(t.learning_rate, t.warmup_steps, t.rewarm_steps, resumed.then_some(step)),
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
        let (done_tx, trainer_done) = oneshot::channel();
        let trainer = {
            let rt = tokio::runtime::Handle::current();
            let stop = worker_stop.clone();
            std::thread::Builder::new()
                .name("trainer".into())
                .spawn(move || {
                    let r = worker.run(rt, event_rx, stop);
                    // The session may be draining already and no longer listen.
                    let _ = done_tx.send(());
                    r
                })
                .context("starting the trainer thread")?
        };
        Ok(Self {
            consumer,
            consume_stop,
            dlq_stop,
            worker_stop,
            intake: intake.task,
            feeder,
            committer,
            monitor: None,
            trainer,
            trainer_done,
            writer,
            checkpoint_failures,
        })
    }

    /// Keeps readiness (and `unimod_ready`) in step with the broker's health and the
    /// checkpoint failures, until consumption stops.
    pub(super) fn monitor_readiness(&mut self, shared: &Shared) {
        let consumer = Arc::clone(&self.consumer);
        let lifecycle = shared.lifecycle.clone();
        let stop = self.consume_stop.clone();
        let failures = Arc::clone(&self.checkpoint_failures);
        let unready_at = u64::from(shared.config.storage.max_failed_checkpoints);
        self.monitor = Some(tokio::spawn(async move {
            loop {
                lifecycle.observe(consumer.connected(), unready_at > 0 && failures.load(Ordering::Relaxed) >= unready_at);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }));
    }

    /// Waits for a shutdown request (`true`) or the trainer ending on its own (`false`).
    pub(super) async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = &mut self.trainer_done => false,
        }
    }

    /// Consecutive failed checkpoint writes (shared with the writer thread).
    pub(super) fn checkpoint_failures(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.checkpoint_failures)
    }

    /// Stops everything in the fixed order, within `shutdown.drain_seconds`, and returns how
    /// the trainer ended. With `shutdown_requested` the session first turns unready (stage 1);
    /// HTTP stops later, in `run`.
    pub(super) async fn drain(self, shared: &Shared, shutdown_requested: bool) -> anyhow::Result<WorkerExit> {
        let budget = Duration::from_secs(shared.config.shutdown.drain_seconds);
        match tokio::time::timeout(budget, self.drain_stages(shared, shutdown_requested, budget)).await {
            Ok(r) => r,
            Err(_) => anyhow::bail!(
                "drain exceeded shutdown.drain_seconds = {}; exiting without a final checkpoint (the previous one stays valid)",
                budget.as_secs()
            ),
        }
    }

    async fn drain_stages(self, shared: &Shared, shutdown_requested: bool, budget: Duration) -> anyhow::Result<WorkerExit> {
        let drain_started = Instant::now();
        if shutdown_requested {
            // Stage 1.
            shared.lifecycle.enter(Phase::Draining);
            tracing::info!("drain 1/5: not ready");
        }
        // Stage 2: stop consuming, whatever is queued: the records waiting in the queues and
        // the dead-letter copies under way are abandoned (not finished, so not in the final
        // checkpoint: consumed again after the restart). The trainer starts no new step.
        self.consume_stop.cancel();
        self.dlq_stop.cancel();
        self.worker_stop.cancel();
        self.intake.abort();
        self.feeder.abort();
        settle("preprocessing", self.intake.await);
        settle("feeder", self.feeder.await);
        if let Some(monitor) = self.monitor {
            settle("readiness monitor", monitor.await);
        }
        tracing::info!(ms = drain_started.elapsed().as_millis() as u64, "drain 2/5: consumption stopped");
        // Stage 3: the trainer finishes its step and writes the final checkpoint.
        let trainer = self.trainer;
        let exit = tokio::task::spawn_blocking(move || trainer.join())
            .await
            .context("joining the trainer thread")?
            .map_err(|_| anyhow::anyhow!("the trainer thread panicked"))??;
        let writer = self.writer;
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .context("joining the checkpoint writer")?
            .map_err(|_| anyhow::anyhow!("the checkpoint writer panicked"))?;
        tracing::info!(?exit, ms = drain_started.elapsed().as_millis() as u64, "drain 3/5: trainer stopped");
        // Stage 4: the committer drains the last durable notifications.
        settle("offset committer", self.committer.await);
        tracing::info!(ms = drain_started.elapsed().as_millis() as u64, "drain 4/5: offsets committed");
        // Stage 5 (the consumer closes; HTTP stops in `run`), within what is left.
        let left = budget.saturating_sub(drain_started.elapsed() + Duration::from_millis(500));
        match Arc::try_unwrap(self.consumer) {
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
        Ok(exit)
    }
}

/// The end of a joined task: a cancellation is what the drain asked for, a panic is logged.
pub(super) fn settle(task: &str, joined: Result<(), JoinError>) {
    match joined {
        Ok(()) => {}
        Err(e) if e.is_cancelled() => {}
        Err(e) => tracing::error!(task, error = %e, "task panicked"),
    }
}

/// Commits the offsets of every durable checkpoint to the consumer group, in order.
async fn commit_durable(consumer: Arc<KafkaConsumer>, mut durable: mpsc::Receiver<Durable>) {
    while let Some(d) = durable.recv().await {
        match consumer.commit(&d.offsets).await {
            Ok(()) => tracing::debug!(checkpoint = d.id, "offsets committed to the consumer group"),
            Err(e) => tracing::warn!(checkpoint = d.id, error = %e, "offset commit failed (the checkpoint is durable; will commit with the next one)"),
        }
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
) {
    while let Some(p) = processed.recv().await {
        let kind = p.raw.kind;
        let event = match p.outcome {
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
