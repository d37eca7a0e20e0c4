//! Every metric the daemon itself emits (ingest registers its own on the same registry), in
//! one place, with names as constants. Labels are low-cardinality: kind, objective, source.
//! docs/interface.md section 5 is the contract for the names.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// `unimod_records_total{kind, outcome}`.
pub const RECORDS_TOTAL: &str = "unimod_records_total";
/// `unimod_train_steps_total`.
pub const TRAIN_STEPS_TOTAL: &str = "unimod_train_steps_total";
/// `unimod_train_loss{objective}`.
pub const TRAIN_LOSS: &str = "unimod_train_loss";
/// `unimod_learning_rate`.
pub const LEARNING_RATE: &str = "unimod_learning_rate";
/// `unimod_train_samples_total{source}`.
pub const TRAIN_SAMPLES_TOTAL: &str = "unimod_train_samples_total";
/// `unimod_train_tokens_total`.
pub const TRAIN_TOKENS_TOTAL: &str = "unimod_train_tokens_total";
/// `unimod_train_step_seconds`.
pub const TRAIN_STEP_SECONDS: &str = "unimod_train_step_seconds";
/// `unimod_train_grad_norm`.
pub const TRAIN_GRAD_NORM: &str = "unimod_train_grad_norm";
/// `unimod_checkpoint_seconds`.
pub const CHECKPOINT_SECONDS: &str = "unimod_checkpoint_seconds";
/// `unimod_checkpoint_stall_seconds`.
pub const CHECKPOINT_STALL_SECONDS: &str = "unimod_checkpoint_stall_seconds";
/// `unimod_checkpoint_last_success_timestamp_seconds`.
pub const CHECKPOINT_LAST_SUCCESS: &str = "unimod_checkpoint_last_success_timestamp_seconds";
/// `unimod_checkpoint_bytes`.
pub const CHECKPOINT_BYTES: &str = "unimod_checkpoint_bytes";
/// `unimod_checkpoint_failures_total`.
pub const CHECKPOINT_FAILURES_TOTAL: &str = "unimod_checkpoint_failures_total";
/// `unimod_checkpoint_store_bytes`.
pub const CHECKPOINT_STORE_BYTES: &str = "unimod_checkpoint_store_bytes";
/// `unimod_replay_buffer_items{kind}`.
pub const REPLAY_BUFFER_ITEMS: &str = "unimod_replay_buffer_items";
/// `unimod_nonfinite_steps_total`.
pub const NONFINITE_STEPS_TOTAL: &str = "unimod_nonfinite_steps_total";
/// `unimod_rollbacks_total`.
pub const ROLLBACKS_TOTAL: &str = "unimod_rollbacks_total";
/// `unimod_train_shape_signatures`.
pub const TRAIN_SHAPE_SIGNATURES: &str = "unimod_train_shape_signatures";
/// `unimod_build_info{version, backend, fusion}`.
pub const BUILD_INFO: &str = "unimod_build_info";
/// `unimod_ready`.
pub const READY: &str = "unimod_ready";
/// `unimod_dead_letter_failures_total{reason}`.
pub const DEAD_LETTER_FAILURES_TOTAL: &str = "unimod_dead_letter_failures_total";
/// `unimod_dead_letter_value_dropped_total{reason}`.
pub const DEAD_LETTER_VALUE_DROPPED_TOTAL: &str = "unimod_dead_letter_value_dropped_total";
/// `unimod_checkpoint_failures_in_row`.
pub const CHECKPOINT_FAILURES_IN_ROW: &str = "unimod_checkpoint_failures_in_row";
/// `unimod_trainer_queue_items`.
pub const TRAINER_QUEUE_ITEMS: &str = "unimod_trainer_queue_items";

/// `unimod_cmcl_items_total{role}`.
pub const CMCL_ITEMS_TOTAL: &str = "unimod_cmcl_items_total";
/// `unimod_cmcl_positive_similarity{modality}`.
pub const CMCL_POSITIVE_SIMILARITY: &str = "unimod_cmcl_positive_similarity";

/// What CMCL's stream state adds to the pairs of a step (see `train::cmcl`).
#[derive(Clone)]
pub struct CmclMetrics {
    /// Items added to pairs by role: `rewrite_negative`, `tfidf_negative`, `text_positive`,
    /// `image_positive`.
    pub items: IntCounterVec,
    /// Similarity of each retrieved positive to its pair (`modality` = `text`: TF-IDF cosine
    /// to the caption; `image`: cosine of the pooled embeddings).
    pub positive_similarity: HistogramVec,
}

impl CmclMetrics {
    /// The metrics, not yet registered anywhere, with every series at zero.
    pub fn new() -> prometheus::Result<Self> {
        let items = IntCounterVec::new(
            Opts::new(CMCL_ITEMS_TOTAL, "CMCL hard negatives and retrieved positives added to pairs, by role"),
            &["role"],
        )?;
        let positive_similarity = HistogramVec::new(
            HistogramOpts::new(CMCL_POSITIVE_SIMILARITY, "Similarity of each retrieved CMCL positive to its pair")
                .buckets(prometheus::linear_buckets(0.0, 0.05, 21)?),
            &["modality"],
        )?;
        for role in ["rewrite_negative", "tfidf_negative", "text_positive", "image_positive"] {
            items.with_label_values(&[role]);
        }
        Ok(Self { items, positive_similarity })
    }
}

/// The daemon's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Records by kind and outcome (trained, rejected).
    pub records: IntCounterVec,
    /// Optimizer steps applied or skipped.
    pub steps: IntCounter,
    /// Last step's loss per objective (and `total`).
    pub loss: GaugeVec,
    /// Learning rate of the last step.
    pub learning_rate: Gauge,
    /// Samples trained by source (fresh, replay).
    pub samples: IntCounterVec,
    /// Text tokens trained.
    pub tokens: IntCounter,
    /// Wall time of one optimizer step (all micro-batches).
    pub step_seconds: Histogram,
    /// Global gradient norm of the last step (before clipping).
    pub grad_norm: Gauge,
    /// Checkpoint write time (serialise + store + flush).
    pub checkpoint_seconds: Histogram,
    /// Time the trainer thread spends on a periodic checkpoint (serialising the state and
    /// handing it to the writer): the training stall a checkpoint causes.
    pub checkpoint_stall_seconds: Histogram,
    /// Unix time of the last durable checkpoint.
    pub checkpoint_last_success: Gauge,
    /// Bytes of the last checkpoint.
    pub checkpoint_bytes: IntGauge,
    /// Failed checkpoint writes.
    pub checkpoint_failures: IntCounter,
    /// Size of the sled store on disk.
    pub store_bytes: IntGauge,
    /// Replay buffer items by kind.
    pub replay_items: IntGaugeVec,
    /// Steps skipped because a loss or gradient was not finite.
    pub nonfinite_steps: IntCounter,
    /// Rollbacks to the last checkpoint after repeated non-finite steps.
    pub rollbacks: IntCounter,
    /// 1 while `/readyz` answers 200.
    pub ready: IntGauge,
    /// Records queued for the trainer thread.
    pub trainer_queue: IntGauge,
    /// Build information (constant 1).
    pub build_info: IntGaugeVec,
    /// Rejected records whose dead-letter copy (even without the value) failed, by reason.
    pub dead_letter_failures: IntCounterVec,
    /// Dead-letter copies sent without the record's value, by reason.
    pub dead_letter_value_dropped: IntCounterVec,
    /// Consecutive failed checkpoint writes (0 after a success).
    pub checkpoint_failures_in_row: IntGauge,
    /// Distinct shape signatures of training steps so far (this process).
    pub shape_signatures: IntGauge,
    /// CMCL negatives and positives.
    pub cmcl: CmclMetrics,
}

impl Metrics {
    /// Registers every daemon metric on `registry`.
    pub fn register(registry: &Registry, backend: &str, fusion: bool) -> prometheus::Result<Self> {
        let records = IntCounterVec::new(
            Opts::new(RECORDS_TOTAL, "Fresh records by kind and outcome (trained, rejected)"),
            &["kind", "outcome"],
        )?;
        let steps = IntCounter::new(TRAIN_STEPS_TOTAL, "Optimizer steps taken (including skipped non-finite ones)")?;
        let loss = GaugeVec::new(Opts::new(TRAIN_LOSS, "Loss of the last step per objective"), &["objective"])?;
        let learning_rate = Gauge::new(LEARNING_RATE, "Learning rate of the last step")?;
        let samples = IntCounterVec::new(
            Opts::new(TRAIN_SAMPLES_TOTAL, "Samples trained by source (fresh, replay)"),
            &["source"],
        )?;
        let tokens = IntCounter::new(TRAIN_TOKENS_TOTAL, "Text tokens (excluding padding) trained")?;
        let step_seconds = Histogram::with_opts(
            HistogramOpts::new(TRAIN_STEP_SECONDS, "Wall time of one optimizer step")
                .buckets(prometheus::exponential_buckets(0.005, 2.0, 14)?),
        )?;
        let grad_norm = Gauge::new(TRAIN_GRAD_NORM, "Global gradient norm of the last step, before clipping")?;
        let checkpoint_seconds = Histogram::with_opts(
            HistogramOpts::new(CHECKPOINT_SECONDS, "Time to write one checkpoint durably")
                .buckets(prometheus::exponential_buckets(0.01, 2.0, 14)?),
        )?;
        let checkpoint_stall_seconds = Histogram::with_opts(
            HistogramOpts::new(CHECKPOINT_STALL_SECONDS, "Training time lost to a periodic checkpoint (serialise + hand-over)")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 16)?),
        )?;
        let checkpoint_last_success =
            Gauge::new(CHECKPOINT_LAST_SUCCESS, "Unix time of the last durable checkpoint")?;
        let checkpoint_bytes = IntGauge::new(CHECKPOINT_BYTES, "Bytes of the last checkpoint")?;
        let checkpoint_failures = IntCounter::new(CHECKPOINT_FAILURES_TOTAL, "Checkpoint writes that failed")?;
        let store_bytes = IntGauge::new(CHECKPOINT_STORE_BYTES, "Size of the checkpoint store on disk")?;
        let replay_items =
            IntGaugeVec::new(Opts::new(REPLAY_BUFFER_ITEMS, "Replay buffer items by kind"), &["kind"])?;
        let nonfinite_steps =
            IntCounter::new(NONFINITE_STEPS_TOTAL, "Steps skipped because a loss or gradient was not finite")?;
        let rollbacks = IntCounter::new(ROLLBACKS_TOTAL, "Rollbacks to the last checkpoint")?;
        let ready = IntGauge::new(READY, "1 while the daemon is consuming and training")?;
        let trainer_queue = IntGauge::new(TRAINER_QUEUE_ITEMS, "Records waiting for the trainer")?;
        let build_info = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Build information; always 1"),
            &["version", "backend", "fusion"],
        )?;
        let shape_signatures = IntGauge::new(
            TRAIN_SHAPE_SIGNATURES,
            "Distinct tensor-shape signatures of training steps seen by this process (each new one is a kernel compile on a GPU backend)",
        )?;
        let dead_letter_failures = IntCounterVec::new(
            Opts::new(DEAD_LETTER_FAILURES_TOTAL, "Rejected records finished without any dead-letter copy, by reason"),
            &["reason"],
        )?;
        let dead_letter_value_dropped = IntCounterVec::new(
            Opts::new(DEAD_LETTER_VALUE_DROPPED_TOTAL, "Dead-letter copies sent without the record's value, by reason"),
            &["reason"],
        )?;
        let checkpoint_failures_in_row =
            IntGauge::new(CHECKPOINT_FAILURES_IN_ROW, "Consecutive failed checkpoint writes (0 after a success)")?;
        let cmcl = CmclMetrics::new()?;
        for c in [
            Box::new(dead_letter_failures.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dead_letter_value_dropped.clone()),
            Box::new(checkpoint_failures_in_row.clone()),
            Box::new(cmcl.items.clone()),
            Box::new(cmcl.positive_similarity.clone()),
            Box::new(records.clone()),
            Box::new(steps.clone()),
            Box::new(loss.clone()),
            Box::new(learning_rate.clone()),
            Box::new(samples.clone()),
            Box::new(tokens.clone()),
            Box::new(step_seconds.clone()),
            Box::new(grad_norm.clone()),
            Box::new(checkpoint_seconds.clone()),
            Box::new(checkpoint_stall_seconds.clone()),
            Box::new(checkpoint_last_success.clone()),
            Box::new(checkpoint_bytes.clone()),
            Box::new(checkpoint_failures.clone()),
            Box::new(store_bytes.clone()),
            Box::new(replay_items.clone()),
            Box::new(nonfinite_steps.clone()),
            Box::new(rollbacks.clone()),
            Box::new(ready.clone()),
            Box::new(trainer_queue.clone()),
            Box::new(build_info.clone()),
            Box::new(shape_signatures.clone()),
        ] {
            registry.register(c)?;
        }
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), backend, if fusion { "true" } else { "false" }])
            .set(1);
        // Series that exist from the start, so dashboards and alerts see zeros, not gaps.
        for kind in ["text", "image", "pair"] {
            for outcome in ["trained", "rejected"] {
                records.with_label_values(&[kind, outcome]);
            }
            replay_items.with_label_values(&[kind]);
        }
        for source in ["fresh", "replay"] {
            samples.with_label_values(&[source]);
        }
        Ok(Self {
            records,
            steps,
            loss,
            learning_rate,
            samples,
            tokens,
            step_seconds,
            grad_norm,
            checkpoint_seconds,
            checkpoint_stall_seconds,
            checkpoint_last_success,
            checkpoint_bytes,
            checkpoint_failures,
            store_bytes,
            replay_items,
            nonfinite_steps,
            rollbacks,
            ready,
            trainer_queue,
            build_info,
            dead_letter_failures,
            dead_letter_value_dropped,
            checkpoint_failures_in_row,
            shape_signatures,
            cmcl,
        })
    }

    /// Everything one optimizer step changes in the metrics, in one call.
    pub fn on_step(&self, step: &StepTelemetry<'_>) {
        let report = step.report;
        self.steps.inc();
        self.step_seconds.observe(step.seconds);
        self.learning_rate.set(step.learning_rate);
        self.samples.with_label_values(&["fresh"]).inc_by(step.trained.iter().sum());
        self.samples.with_label_values(&["replay"]).inc_by(step.replayed as u64);
        self.tokens.inc_by(report.tokens as u64);
        self.grad_norm.set(f64::from(report.grad_norm));
        self.shape_signatures.set(step.shape_signatures as i64);
        for (name, loss) in &report.losses {
            // A non-finite step keeps the last finite value (the step counts it instead).
            if loss.is_finite() {
                self.loss.with_label_values(&[name]).set(f64::from(*loss));
            }
        }
        for (i, kind) in ["text", "image", "pair"].into_iter().enumerate() {
            self.records.with_label_values(&[kind, "trained"]).inc_by(step.trained[i]);
            self.replay_items.with_label_values(&[kind]).set(step.replay_items[i] as i64);
        }
        if report.nonfinite {
            self.nonfinite_steps.inc();
        }
    }
}

/// What one optimizer step did, for [`Metrics::on_step`]. Per-kind arrays are in the order
/// text, image, pair.
#[derive(Debug)]
pub struct StepTelemetry<'a> {
    /// The trainer's report (losses, gradient norm, tokens, non-finite).
    pub report: &'a unimod_model::StepReport,
    /// Wall time of the step.
    pub seconds: f64,
    /// Its learning rate.
    pub learning_rate: f64,
    /// Fresh records now in the lineage, per kind.
    pub trained: [u64; 3],
    /// Replayed items in the batch.
    pub replayed: usize,
    /// Items in each replay buffer after the step.
    pub replay_items: [usize; 3],
    /// Distinct tensor-shape signatures the trainer has compiled so far.
    pub shape_signatures: usize,
}
