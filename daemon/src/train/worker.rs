//! The trainer thread: takes preprocessed records from a bounded channel, builds mixed
//! batches (fresh + replay), runs optimizer steps, keeps the lineage, and hands checkpoints to
//! the writer thread at step boundaries. Nothing here runs on the async runtime.
//!
//! Order of work per iteration: receive (bounded lookahead, so backpressure reaches the
//! Kafka consumer) -> choose the batch -> step -> account the lineage -> maybe checkpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use unimod_ingest::record::{RawRecord, RecordKind, Sample, SourcePos};
use unimod_ingest::reject::RejectReason;
use unimod_ingest::telemetry::IngestMetrics;
use unimod_model::{Example, Trainer};

use super::batcher::Batcher;
use super::cmcl::CmclData;
use super::examples::{replay_example, sample_example};
use super::lineage::{Admission, Lineage};
use super::mix::kind_index;
use super::nonfinite::isolate;
use super::replay::{ReplayBuffers, ReplayItem};
use super::schedule::Schedule;
use crate::checkpoint::{CheckpointJob, CheckpointSink, StreamState};
use crate::dead_letter::{Copied, DeadLetters};
use crate::telemetry::{Metrics, StepTelemetry};

/// What the feeder sends to the trainer thread, in partition order.
#[derive(Debug)]
pub enum Event {
    /// A model-ready record.
    Ready(Sample),
    /// A rejected record (already counted and logged). It is finished once its dead-letter
    /// copy has ended (`copied`; `None`: no copy to wait for).
    Rejected {
        /// Its kind.
        kind: RecordKind,
        /// Where it came from.
        pos: SourcePos,
        /// Resolves when the dead-letter copy has ended.
        copied: Option<Copied>,
    },
}

/// Loop parameters taken from the config.
#[derive(Debug, Clone)]
pub struct WorkerParams {
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// Micro-batches per step.
    pub grad_accumulation: usize,
    /// Share of replayed samples.
    pub replay_ratio: f64,
    /// Mix weights (text, image, pair).
    pub mix: [f64; 3],
    /// Most records queued inside the trainer (lookahead for mixing).
    pub lookahead: usize,
    /// Train a partial batch after this long without new records.
    pub max_batch_wait: Duration,
    /// Checkpoint every N steps (0 = off).
    pub checkpoint_every_steps: u64,
    /// Checkpoint every T (None = off).
    pub checkpoint_every: Option<Duration>,
    /// Stop after this many steps in this run.
    pub max_steps: Option<u64>,
    /// Stop at this instant.
    pub deadline: Option<Instant>,
    /// Roll back after this many non-finite steps in a row.
    pub max_nonfinite_in_row: u32,
    /// Stop (exit 1) after this many failed checkpoint writes in a row (0 = never).
    pub max_failed_checkpoints: u32,
}

/// Why the trainer thread ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// Shutdown was requested (or the input ended); a final checkpoint was written.
    Stopped,
    /// `--max-steps` or `--max-seconds` was reached; a final checkpoint was written.
    BoundReached,
    /// Too many non-finite steps in a row: the caller reloads the last checkpoint.
    Rollback,
    /// Checkpoint writes kept failing (`storage.max_failed_checkpoints`): no final checkpoint.
    CheckpointsFailing,
}

/// Everything the trainer thread owns.
pub struct Worker<B: AutodiffBackend> {
    /// The model and optimizer.
    pub trainer: Trainer<B>,
    /// Records in the model.
    pub lineage: Lineage,
    /// Replay buffers.
    pub replay: ReplayBuffers,
    /// Hard negatives and retrieved positives (UNIMO's CMCL); `None` when CMCL is off.
    pub cmcl: Option<CmclData>,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Optimizer steps in the lineage so far.
    pub step: u64,
    /// Tokenizer JSON stored with every checkpoint.
    pub tokenizer_json: Arc<String>,
    /// Loop parameters.
    pub params: WorkerParams,
    /// Metrics.
    pub metrics: Metrics,
    /// Where checkpoints go.
    pub sink: CheckpointSink,
    /// Incremented at every loop iteration: the systemd watchdog pings only while it moves.
    pub progress: Arc<AtomicU64>,
    /// Changes to the checkpointed state (steps, rejections) since the lineage started here.
    pub generation: u64,
    /// `generation` at the last checkpoint handed to the writer.
    pub checkpointed_generation: u64,
    /// Dead-letter copies of records found to make steps non-finite.
    pub dead_letters: DeadLetters,
    /// Rejection counters (`unimod_records_rejected_total{kind,reason}`).
    pub ingest_metrics: IngestMetrics,
    /// Consecutive failed checkpoint writes, kept by the writer thread.
    pub checkpoint_failures_in_row: Arc<AtomicU64>,
    /// Serving snapshots: called at start and every N steps, between steps.
    pub snapshot: Option<(u64, crate::serve::StepHook<B>)>,
}

impl<B: AutodiffBackend> Worker<B> {
    /// Runs until `stop` is cancelled, the input closes, a bound is reached, or a rollback is
    /// needed. `rt` drives the async channel from this thread.
    pub fn run(
        mut self,
        rt: tokio::runtime::Handle,
        mut events: mpsc::Receiver<Event>,
        stop: CancellationToken,
    ) -> anyhow::Result<WorkerExit> {
        let mut batcher = Batcher::new(self.params.mix, self.step ^ 0x5eed);
        let mut last_checkpoint = Instant::now();
        let mut steps_this_run = 0u64;
        let mut nonfinite_in_row = 0u32;
        let mut input_closed = false;
        // Rejected records whose dead-letter copy is still under way (their offsets wait).
        let mut pending: Vec<(SourcePos, Copied)> = Vec::new();
        if let Some((_, hook)) = self.snapshot.as_mut() {
            hook(self.step, &self.trainer);
        }
        let fresh_target = {
            let replay = (self.params.batch_size as f64 * self.params.replay_ratio).round() as usize;
            self.params.batch_size.saturating_sub(replay).max(1)
        };
        loop {
            // Liveness for the systemd watchdog: every iteration, idle or not, bumps it; a
            // step stuck forever stops it.
            self.progress.fetch_add(1, Ordering::Relaxed);
            self.finish_copied(&mut pending);
            if self.params.max_failed_checkpoints > 0
                && self.checkpoint_failures_in_row.load(Ordering::Relaxed) >= u64::from(self.params.max_failed_checkpoints)
            {
                tracing::error!(
                    failures = self.checkpoint_failures_in_row.load(Ordering::Relaxed),
                    "checkpoint writes keep failing (storage.max_failed_checkpoints); stopping without a final checkpoint, the previous one stays valid"
                );
                return Ok(WorkerExit::CheckpointsFailing);
            }
            if stop.is_cancelled() {
                self.final_checkpoint()?;
                return Ok(WorkerExit::Stopped);
            }
            if self.params.max_steps.is_some_and(|m| steps_this_run >= m)
                || self.params.deadline.is_some_and(|d| Instant::now() >= d)
            {
                self.final_checkpoint()?;
                return Ok(WorkerExit::BoundReached);
            }
            // 1. Receive: drain what is there (up to the lookahead), then wait for a batch.
            let wait_until = Instant::now() + self.params.max_batch_wait;
            while !input_closed && batcher.len() < self.params.lookahead {
                let event = match events.try_recv() {
                    Ok(e) => Some(e),
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        input_closed = true;
                        None
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if batcher.len() >= fresh_target || stop.is_cancelled() {
                            break;
                        }
                        let now = Instant::now();
                        if now >= wait_until {
                            break;
                        }
                        // Wake at least every 100 ms to notice a stop request or a deadline.
                        let slice = (wait_until - now).min(Duration::from_millis(100));
                        match rt.block_on(async { tokio::time::timeout(slice, events.recv()).await }) {
                            Ok(Some(e)) => Some(e),
                            Ok(None) => {
                                input_closed = true;
                                None
                            }
                            Err(_) => None,
                        }
                    }
                };
                match event {
                    Some(Event::Ready(sample)) => match self.lineage.admit(&sample.pos) {
                        Admission::New => batcher.push(sample),
                        Admission::AlreadyDone => {}
                    },
                    Some(Event::Rejected { pos, copied, .. }) => {
                        if self.lineage.admit(&pos) == Admission::New {
                            match copied {
                                Some(copied) => pending.push((pos, copied)),
                                None => {
                                    self.lineage.rejected(&pos);
                                    self.generation += 1;
                                }
                            }
                        }
                    }
                    None => {}
                }
            }
            self.metrics.trainer_queue.set(batcher.len() as i64);
            // A stop request during the wait: no new step.
            if stop.is_cancelled() {
                continue;
            }
            if batcher.is_empty() {
                if input_closed {
                    self.final_checkpoint()?;
                    return Ok(WorkerExit::Stopped);
                }
                // Never during a run of diverged steps (see step 5).
                if nonfinite_in_row == 0 {
                    self.maybe_checkpoint(&mut last_checkpoint)?;
                }
                continue;
            }

            // 2. Choose the batch: fresh samples by mix weights, then replay.
            let fresh = batcher.take(fresh_target);
            let n_replay = self.params.batch_size.saturating_sub(fresh.len()).min(
                (self.params.batch_size as f64 * self.params.replay_ratio).round() as usize,
            );
            let replayed = self.replay.sample(n_replay, self.params.mix);
            let mut examples: Vec<Example> = Vec::with_capacity(fresh.len() + replayed.len());
            for s in &fresh {
                examples.push(sample_example(s));
            }
            for (_, item) in &replayed {
                examples.push(replay_example(item));
            }
            if let Some(cmcl) = self.cmcl.as_mut() {
                let captions: Vec<Option<&str>> = fresh
                    .iter()
                    .map(|s| s.text.as_ref().map(|t| t.text.as_str()))
                    .chain(replayed.iter().map(|(_, it)| it.text.as_ref().map(|t| t.text.as_str())))
                    .collect();
                cmcl.enrich(&mut examples, &captions);
            }
            let micro = split(examples, self.params.grad_accumulation);

            // 3. Step.
            let lr = self.schedule.lr(self.step);
            let started = Instant::now();
            let report = self.trainer.step(&micro, lr);
            // A non-finite step applied nothing: find the examples that cause it, train the
            // others (in halves), and reject the culprits among the fresh records.
            let mut trained_idx: Vec<usize> = (0..fresh.len()).collect();
            let mut culprit_idx: Vec<usize> = Vec::new();
            let mut diverged = false;
            if report.nonfinite {
                let flat: Vec<Example> = micro.into_iter().flatten().collect();
                let n = flat.len();
                let found = isolate(&mut self.trainer, flat, lr);
                tracing::warn!(
                    step = self.step + 1,
                    culprits = found.culprits.len(),
                    trained = found.applied.len(),
                    probes = found.probes,
                    "non-finite step: isolated the examples that cause it"
                );
                diverged = found.model_diverged(n);
                trained_idx = found.applied.iter().copied().filter(|&i| i < fresh.len()).collect();
                if diverged {
                    culprit_idx.clear();
                } else {
                    culprit_idx = found.culprits.iter().copied().filter(|&i| i < fresh.len()).collect();
                    let replayed_bad = found.culprits.iter().filter(|&&i| i >= fresh.len()).count();
                    if replayed_bad > 0 {
                        tracing::warn!(items = replayed_bad, "replayed items made a step non-finite; left out of it");
                    }
                }
            }
            let elapsed = started.elapsed();
            self.step += 1;
            self.generation += 1;
            steps_this_run += 1;

            // 4. Account: every fresh record of the batch is now in the lineage.
            // Split the fresh records: trained (an update containing them was applied, or
            // the step had nothing to learn from them), culprits (rejected), and the rest of
            // a diverged step (back to the batcher; a rollback may follow).
            let mut trained = Vec::with_capacity(trained_idx.len());
            let mut retry = Vec::new();
            for (i, s) in fresh.into_iter().enumerate() {
                if trained_idx.binary_search(&i).is_ok() {
                    trained.push(s);
                } else if culprit_idx.binary_search(&i).is_ok() {
                    self.reject_nonfinite(s, rt.clone(), &mut pending);
                } else {
                    retry.push(s);
                }
            }
            if let Some(cmcl) = self.cmcl.as_mut() {
                cmcl.observe(&trained);
                cmcl.count_image_positives(&report.image_positives);
            }
            let mut trained_kinds = [0u64; 3];
            for s in trained {
                self.lineage.trained(s.kind, &s.pos);
                trained_kinds[kind_index(s.kind)] += 1;
                self.replay.offer(s.kind, ReplayItem { text: s.text, image: s.image });
            }
            for s in retry {
                batcher.push(s);
            }
            self.metrics.on_step(&StepTelemetry {
                report: &report,
                seconds: elapsed.as_secs_f64(),
                learning_rate: lr,
                trained: trained_kinds,
                replayed: replayed.len(),
                replay_items: RecordKind::ALL.map(|k| self.replay.len(k)),
                shape_signatures: self.trainer.shape_signatures(),
            });
            if report.nonfinite && diverged {
                nonfinite_in_row += 1;
                tracing::warn!(step = self.step, in_row = nonfinite_in_row, "non-finite loss or gradient for most examples: the model diverged; update skipped");
                if nonfinite_in_row >= self.params.max_nonfinite_in_row {
                    tracing::error!(
                        in_row = nonfinite_in_row,
                        "too many non-finite steps in a row: rolling back to the last checkpoint"
                    );
                    self.metrics.rollbacks.inc();
                    return Ok(WorkerExit::Rollback);
                }
            } else {
                nonfinite_in_row = 0;
            }
            if self.step.is_multiple_of(50) {
                let total = report.losses.first().map_or(f32::NAN, |(_, l)| *l);
                tracing::info!(step = self.step, loss = total, lr, step_ms = elapsed.as_millis() as u64, "training");
            }

            if let Some((every, hook)) = self.snapshot.as_mut() {
                if self.step.is_multiple_of(*every) {
                    hook(self.step, &self.trainer);
                }
            }

            // 5. Checkpoint when due, but not while the model is diverging: a checkpoint
            // written between diverged steps would become the rollback target, so every
            // rollback would land on a new checkpoint and the cap on rolling back to the same
            // place twice would never fire (a loop of rollbacks, seen with a learning rate of
            // 1e30). The next finite step writes the checkpoint that is due.
            let by_steps = self.params.checkpoint_every_steps > 0
                && self.step.is_multiple_of(self.params.checkpoint_every_steps);
            if nonfinite_in_row > 0 {
                tracing::debug!(step = self.step, "checkpoint deferred: the model is diverging");
            } else if by_steps {
                self.checkpoint(false, &mut last_checkpoint)?;
            } else {
                self.maybe_checkpoint(&mut last_checkpoint)?;
            }
        }
    }

    /// Finishes the rejected records whose dead-letter copy has ended.
    fn finish_copied(&mut self, pending: &mut Vec<(SourcePos, Copied)>) {
        pending.retain_mut(|(pos, copied)| match copied.try_recv() {
            Ok(()) => {
                self.lineage.rejected(pos);
                self.generation += 1;
                false
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => true,
            // Abandoned at shutdown: the record stays unfinished and is consumed again.
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => false,
        });
    }

    /// Rejects a fresh record that makes steps non-finite (reason `nonfinite`): counted,
    /// copied to the dead-letter topic (headers only: the value is not kept after
    /// preprocessing), finished once the copy has ended.
    fn reject_nonfinite(&mut self, s: Sample, rt: tokio::runtime::Handle, pending: &mut Vec<(SourcePos, Copied)>) {
        let reason = RejectReason::Nonfinite;
        self.ingest_metrics.record_rejected(s.kind, reason);
        self.metrics.records.with_label_values(&[s.kind.as_str(), "rejected"]).inc();
        tracing::warn!(pos = %s.pos, id = ?s.id, reason = reason.as_str(), "record rejected: it makes the training step non-finite");
        let raw = RawRecord { kind: s.kind, pos: s.pos.clone(), key: None, payload: None, received_at: Instant::now() };
        let detail = "the loss or gradient of this record is not finite (value not kept; read it at the source offset)".to_owned();
        let copied = rt.block_on(self.dead_letters.copy(raw, reason.as_str(), detail));
        match copied {
            Some(copied) => pending.push((s.pos, copied)),
            None => {
                self.lineage.rejected(&s.pos);
                self.generation += 1;
            }
        }
    }

    /// A time-based checkpoint, when one is due and anything changed since the last one (an
    /// idle stream does not rewrite identical checkpoints).
    fn maybe_checkpoint(&mut self, last: &mut Instant) -> anyhow::Result<()> {
        if self.generation != self.checkpointed_generation
            && self.params.checkpoint_every.is_some_and(|every| last.elapsed() >= every)
        {
            self.checkpoint(false, last)?;
        }
        Ok(())
    }

    /// Serialises the state (on this thread: a consistent cut between steps) and hands it to
    /// the writer. A periodic checkpoint is skipped when the writer is still busy with the
    /// previous one, so training never waits for the disk.
    fn checkpoint(&mut self, wait: bool, last: &mut Instant) -> anyhow::Result<()> {
        let stall = Instant::now();
        let state = self.trainer.save().map_err(|e| anyhow::anyhow!("serialising the model: {e}"))?;
        let job = CheckpointJob {
            step: self.step,
            trainer: state,
            stream: StreamState { counts: self.lineage.counts, offsets: self.lineage.progress() },
            replay: self.replay.encode(),
            tokenizer_json: Arc::clone(&self.tokenizer_json),
            parameters: self.trainer.num_params() as u64,
            generation: self.generation,
        };
        if wait {
            self.sink.write_and_wait(job)?;
        } else {
            let taken = self.sink.try_submit(job);
            self.metrics.checkpoint_stall_seconds.observe(stall.elapsed().as_secs_f64());
            if !taken {
                tracing::debug!(step = self.step, "checkpoint writer busy; checkpoint deferred");
                return Ok(());
            }
        }
        *last = Instant::now();
        self.checkpointed_generation = self.generation;
        Ok(())
    }

    fn final_checkpoint(&mut self) -> anyhow::Result<()> {
        // Nothing changed since a periodic checkpoint that is durable (it was taken in the
        // same iteration: `--max-steps` on a multiple of `checkpoint_every_steps`): writing
        // the same state again would only cost the drain a full write and push an older
        // checkpoint out of `keep_checkpoints`.
        if self.generation == self.checkpointed_generation && self.sink.flush()? == Some(self.generation) {
            tracing::info!(step = self.step, "final checkpoint: the latest checkpoint already holds this state");
            return Ok(());
        }
        let mut last = Instant::now();
        self.checkpoint(true, &mut last)
    }
}

/// Splits `examples` into `n` micro-batches of near-equal size (none empty).
fn split(examples: Vec<Example>, n: usize) -> Vec<Vec<Example>> {
    let n = n.clamp(1, examples.len().max(1));
    let per = examples.len().div_ceil(n);
    let mut out = Vec::with_capacity(n);
    let mut it = examples.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(per).collect());
    }
    out
}
