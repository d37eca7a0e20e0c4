//! The checkpoint writer thread: the trainer thread's consistent cut ([`CheckpointJob`]) is
//! written by a dedicated thread ([`CheckpointSink`]) so that training does not wait for
//! the disk, and offsets are committed to the Kafka group only after the checkpoint holding
//! them is durable ([`Durable`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::mpsc;
use unimod_ingest::offsets::PartitionOffsets;
use unimod_model::{ModelConfig, TrainerState};

use super::contents::{blob, TrainerCounters};
use super::{CheckpointMeta, CheckpointStore, ModelSummary, RecordCounts};
use crate::telemetry::Metrics;

/// The stream side of a checkpoint.
#[derive(Debug, Clone)]
pub struct StreamState {
    /// Fresh records in the lineage.
    pub counts: RecordCounts,
    /// Per-partition next offsets (and finished offsets above them).
    pub offsets: Vec<PartitionOffsets>,
}

/// A consistent cut of the trainer's state, taken between two steps.
pub struct CheckpointJob {
    /// Optimizer steps in the lineage.
    pub step: u64,
    /// Model, optimizer, model config.
    pub trainer: TrainerState,
    /// Counts and offsets.
    pub stream: StreamState,
    /// Encoded replay buffers.
    pub replay: Vec<u8>,
    /// The tokenizer.
    pub tokenizer_json: Arc<String>,
    /// Parameter count (for metadata).
    pub parameters: u64,
    /// The trainer's change counter at the cut (steps, finished rejections): two jobs with the
    /// same generation hold the same state, so a final checkpoint right after a periodic one
    /// of the same generation is not written twice.
    pub generation: u64,
}

/// A checkpoint is durable: its offsets may be committed to the consumer group.
#[derive(Debug, Clone)]
pub struct Durable {
    /// Checkpoint id.
    pub id: u64,
    /// The offsets it holds (their next offsets are what the consumer group receives).
    pub offsets: Vec<PartitionOffsets>,
}

type Reply = SyncSender<anyhow::Result<u64>>;

/// What the trainer thread hands to the writer: a checkpoint to write, or (`None`) a barrier
/// that the writer answers with the generation of the last checkpoint it made durable
/// ([`NONE_DURABLE`] when none).
type Request = (Option<CheckpointJob>, Option<Reply>);

/// The barrier's answer when no checkpoint was made durable by this writer.
const NONE_DURABLE: u64 = u64::MAX;

/// The trainer thread's handle to the writer thread.
pub struct CheckpointSink {
    tx: SyncSender<Request>,
}

impl CheckpointSink {
    /// Submits a periodic checkpoint unless the writer is still busy; returns whether it was taken.
    pub fn try_submit(&self, job: CheckpointJob) -> bool {
        match self.tx.try_send((Some(job), None)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("checkpoint writer is gone; checkpoint dropped");
                false
            }
        }
    }

    /// Writes a checkpoint and waits until it is durable (used at shutdown).
    pub fn write_and_wait(&self, job: CheckpointJob) -> anyhow::Result<()> {
        let (reply_tx, reply_rx) = sync_channel(1);
        self.tx
            .send((Some(job), Some(reply_tx)))
            .map_err(|_| anyhow::anyhow!("checkpoint writer is gone"))?;
        let id = reply_rx.recv().map_err(|_| anyhow::anyhow!("checkpoint writer stopped"))??;
        tracing::info!(checkpoint = id, "final checkpoint written");
        Ok(())
    }

    /// Waits until the writer has finished every job handed to it, and returns the
    /// generation of the last checkpoint it made durable (`None` when none was, or the last
    /// one failed: a failed write leaves the previous checkpoint current, not this state).
    pub fn flush(&self) -> anyhow::Result<Option<u64>> {
        let (reply_tx, reply_rx) = sync_channel(1);
        self.tx
            .send((None, Some(reply_tx)))
            .map_err(|_| anyhow::anyhow!("checkpoint writer is gone"))?;
        let generation = reply_rx.recv().map_err(|_| anyhow::anyhow!("checkpoint writer stopped"))??;
        Ok((generation != NONE_DURABLE).then_some(generation))
    }
}

/// Starts the writer thread. It ends when every [`CheckpointSink`] is dropped.
pub fn spawn_writer(
    store: Arc<CheckpointStore>,
    keep: usize,
    model_size: String,
    metrics: Metrics,
    durable: mpsc::Sender<Durable>,
    failures_in_row: Arc<AtomicU64>,
) -> anyhow::Result<(CheckpointSink, std::thread::JoinHandle<()>)> {
    // Capacity 0 would block the trainer until the writer picks the job up; 1 lets the
    // trainer hand over one job and go on.
    let (tx, rx) = sync_channel::<Request>(1);
    let handle = std::thread::Builder::new()
        .name("checkpoint-writer".into())
        .spawn(move || writer_loop(rx, store, keep, model_size, metrics, durable, failures_in_row))
        .context("starting the checkpoint writer thread")?;
    Ok((CheckpointSink { tx }, handle))
}

fn writer_loop(
    rx: Receiver<Request>,
    store: Arc<CheckpointStore>,
    keep: usize,
    model_size: String,
    metrics: Metrics,
    durable: mpsc::Sender<Durable>,
    failures_in_row: Arc<AtomicU64>,
) {
    // The generation of the last checkpoint written, if the last write succeeded.
    let mut durable_generation = NONE_DURABLE;
    while let Ok((job, reply)) = rx.recv() {
        let Some(job) = job else {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(durable_generation));
            }
            continue;
        };
        let started = Instant::now();
        let generation = job.generation;
        let result = write_one(&store, keep, &model_size, job);
        durable_generation = if result.is_ok() { generation } else { NONE_DURABLE };
        match &result {
            Ok((meta, offsets)) => {
                failures_in_row.store(0, Ordering::Relaxed);
                metrics.checkpoint_failures_in_row.set(0);
                metrics.checkpoint_seconds.observe(started.elapsed().as_secs_f64());
                metrics.checkpoint_bytes.set(meta.bytes as i64);
                metrics
                    .checkpoint_last_success
                    .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
                metrics.store_bytes.set(store.size_on_disk().unwrap_or(0) as i64);
                tracing::info!(
                    checkpoint = meta.id,
                    step = meta.step,
                    bytes = meta.bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "checkpoint durable"
                );
                // The committer may be gone at shutdown: the checkpoint is durable anyway.
                let _ = durable.blocking_send(Durable { id: meta.id, offsets: offsets.clone() });
            }
            Err(e) => {
                metrics.checkpoint_failures.inc();
                let n = failures_in_row.fetch_add(1, Ordering::Relaxed) + 1;
                metrics.checkpoint_failures_in_row.set(n as i64);
                tracing::error!(error = %format!("{e:#}"), failures_in_row = n, "checkpoint failed; the previous one stays current");
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(result.map(|(m, _)| m.id));
        }
    }
}

fn write_one(
    store: &CheckpointStore,
    keep: usize,
    model_size: &str,
    job: CheckpointJob,
) -> anyhow::Result<(CheckpointMeta, Vec<PartitionOffsets>)> {
    let config = ModelConfig::from_json(&job.trainer.config_json)
        .map_err(|e| anyhow::anyhow!("model config of the checkpoint: {e}"))?;
    let counters = serde_json::to_vec(&TrainerCounters { steps_applied: job.trainer.steps_applied })?;
    let commit = job.stream.offsets.clone();
    let meta = CheckpointMeta {
        id: 0,
        step: job.step,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        bytes: 0,
        records: job.stream.counts,
        offsets: job.stream.offsets,
        model: ModelSummary {
            arch: config.arch.as_str().to_owned(),
            size: model_size.to_owned(),
            parameters: job.parameters,
        },
        blobs: Vec::new(),
        extra: serde_json::Value::Null,
        data_file: None,
    };
    let blobs = vec![
        (blob::MODEL.to_owned(), job.trainer.model),
        (blob::OPTIMIZER.to_owned(), job.trainer.optimizer),
        (blob::MODEL_CONFIG.to_owned(), job.trainer.config_json.into_bytes()),
        (blob::TOKENIZER.to_owned(), job.tokenizer_json.as_bytes().to_vec()),
        (blob::REPLAY.to_owned(), job.replay),
        (blob::STATE.to_owned(), counters),
    ];
    let meta = store.write(meta, blobs).context("writing the checkpoint to the store")?;
    // The checkpoint is durable: a failed prune only leaves older ones behind (retried with
    // the next checkpoint), it does not make this one a failure.
    if let Err(e) = store.prune(keep) {
        tracing::warn!(checkpoint = meta.id, error = %e, "pruning old checkpoints failed; will retry with the next checkpoint");
    }
    Ok((meta, commit))
}
