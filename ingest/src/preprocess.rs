//! Raw records to model-ready samples, many at a time, off the async runtime.
//!
//! [`Preprocessor::process`] turns one [`RawRecord`] into a [`Processed`]: the record with
//! its [`Outcome`], ready or rejected with a reason. CPU work (message decoding, base64, image
//! decoding and object extraction, tokenisation) runs on the preprocessor's own rayon pool;
//! only downloads run on the async runtime. [`run_pipeline`] processes up to
//! `max_in_flight` records concurrently and emits their outcomes in per-partition order, so a
//! slow download delays only its own partition (until the in-flight bound is reached).

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::config::{ImageConfig, PreprocessConfig};
use crate::decode::{decode_message, normalize_text, DecodeLimits, ImageSource, Message, RegionLimits};
use crate::fetch::ImageFetcher;
use crate::image::{image_to_objects, ObjectExtractor};
use crate::record::{ObjectSequence, RawRecord, RecordKind, Sample, TopicPartition};
use crate::reject::{log_rejection, LogRateLimiter, RejectReason, Rejection};
use crate::telemetry::IngestMetrics;
use crate::text::TextTokenizer;

/// What became of a record.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Ready for training.
    Ready(Sample),
    /// Rejected; the record goes to the dead-letter topic.
    Rejected(Rejection),
}

/// A record with its outcome.
#[derive(Debug, Clone)]
pub struct Processed {
    /// The record as consumed (the dead-letter copy needs its value unchanged).
    pub raw: RawRecord,
    /// Ready or rejected.
    pub outcome: Outcome,
}

/// The preprocessor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessorError {
    /// The worker pool could not start.
    #[error("cannot start the preprocessing pool: {0}")]
    Pool(#[from] rayon::ThreadPoolBuildError),
}

struct Inner {
    image: ImageConfig,
    /// The model's visual feature width: an object sequence of another width is rejected
    /// here, the one place that decides it (`None`: any width, for tools without a model).
    feature_dim: Option<usize>,
    extractor: ObjectExtractor,
    tokenizer: Arc<TextTokenizer>,
    limits: DecodeLimits,
    metrics: Option<IngestMetrics>,
    reject_log: LogRateLimiter,
}

/// Turns raw records into samples. Cheap to clone.
#[derive(Clone)]
pub struct Preprocessor {
    inner: Arc<Inner>,
    pool: Arc<rayon::ThreadPool>,
    fetcher: ImageFetcher,
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preprocessor").field("threads", &self.pool.current_num_threads()).finish()
    }
}

impl Preprocessor {
    /// A preprocessor with its own pool of `preprocess.threads` workers; inline images are
    /// limited to the fetcher's `fetch.max_image_bytes`. Configs are assumed validated. With
    /// `metrics`, rejections are counted
    /// (`unimod_records_rejected_total{kind,reason}`) and logged (rate-limited) here: callers
    /// must not count them again.
    pub fn new(
        preprocess: &PreprocessConfig,
        image: &ImageConfig,
        tokenizer: Arc<TextTokenizer>,
        fetcher: ImageFetcher,
        metrics: Option<IngestMetrics>,
    ) -> Result<Self, PreprocessorError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(preprocess.effective_threads())
            .thread_name(|i| format!("unimod-prep-{i}"))
            .build()?;
        let limits = DecodeLimits {
            max_image_bytes: fetcher.config().max_image_bytes,
            regions: RegionLimits {
                max_objects: image.max_objects,
                max_dimension: image.max_dimension,
                max_abs_feature: image.max_abs_feature as f32,
            },
        };
        Ok(Self {
            inner: Arc::new(Inner {
                image: image.clone(),
                feature_dim: None,
                extractor: ObjectExtractor::new(image),
                tokenizer,
                limits,
                metrics,
                reject_log: LogRateLimiter::default(),
            }),
            pool: Arc::new(pool),
            fetcher,
        })
    }

    /// Rejects every record whose object sequence is not `dim` features wide (precomputed
    /// detector regions of another width, or built-in crops of a config that does not match
    /// the model) with `invalid_regions`, before it reaches training. Call before the first
    /// `process`.
    pub fn with_feature_dim(mut self, dim: usize) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.feature_dim = Some(dim),
            None => unreachable!("with_feature_dim is called on a new preprocessor, before it is shared"),
        }
        self
    }

    /// The tokenizer in use.
    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        &self.inner.tokenizer
    }

    /// Processes one record.
    pub async fn process(&self, mut raw: RawRecord) -> Processed {
        // The payload travels to the pool and back without a copy.
        let payload = Arc::new(raw.payload.take());
        let result = self.try_process(&raw, payload.clone()).await;
        raw.payload = Arc::try_unwrap(payload).unwrap_or_else(|shared| (*shared).clone());
        let outcome = match result {
            Ok(sample) => Outcome::Ready(sample),
            Err(rejection) => {
                if let Some(metrics) = &self.inner.metrics {
                    metrics.record_rejected(raw.kind, rejection.reason);
                }
                log_rejection(&self.inner.reject_log, raw.kind, &raw.pos, &rejection);
                Outcome::Rejected(rejection)
            }
        };
        Processed { raw, outcome }
    }

    /// Runs `job` on the pool; a panic in it (a decoder bug on hostile input) becomes a
    /// rejection instead of taking the process down.
    async fn on_pool<T, F>(&self, job: F) -> Result<T, Rejection>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, Rejection> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let inner = self.inner.clone();
        self.pool.spawn(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| job(&inner)))
                .unwrap_or_else(|_| Err(Rejection::new(RejectReason::ImageDecode, "decoder panicked on this record")));
            // The receiver is gone only when the caller was cancelled; nothing to report then.
            let _ = tx.send(result);
        });
        rx.await
            .unwrap_or_else(|_| Err(Rejection::new(RejectReason::ImageDecode, "preprocessing worker stopped")))
    }

    async fn try_process(&self, raw: &RawRecord, payload: Arc<Option<Vec<u8>>>) -> Result<Sample, Rejection> {
        let kind = raw.kind;
        // Stage 1 on the pool: decode the message, tokenise, and build inline images.
        let (message, text, objects) = self
            .on_pool(move |inner| {
                let payload = payload.as_deref();
                let mut message = decode_message(kind, payload, &inner.limits)?;
                let text = match &message.text {
                    Some(t) => Some(
                        inner
                            .tokenizer
                            .encode(t)
                            .map_err(|e| Rejection::new(RejectReason::Tokenize, e.to_string()))?,
                    ),
                    None => None,
                };
                let objects = inline_objects(inner, &mut message, payload)?;
                Ok((message, text, objects))
            })
            .await?;
        let objects = match (objects, &message.image) {
            (Some(objects), _) => Some(objects),
            (None, Some(ImageSource::Url(url))) => {
                let bytes = self.fetcher.fetch(url).await?;
                // Stage 2 on the pool: decode the downloaded image.
                Some(
                    self.on_pool(move |inner| image_to_objects(&bytes, &inner.image, &inner.extractor))
                        .await?,
                )
            }
            (None, _) => None,
        };
        if let (Some(objects), Some(want)) = (&objects, self.inner.feature_dim) {
            if objects.dim != want {
                return Err(Rejection::new(
                    RejectReason::InvalidRegions,
                    format!("region feature width {} differs from the model's {want}", objects.dim),
                ));
            }
        }
        Ok(Sample { kind, pos: raw.pos.clone(), id: message.id, text, image: objects })
    }
}

/// The object sequence of a message when it needs no download: precomputed regions, or
/// inline bytes (decoded here). `None` for URLs.
fn inline_objects(inner: &Inner, message: &mut Message, payload: Option<&[u8]>) -> Result<Option<ObjectSequence>, Rejection> {
    if let Some(regions) = message.regions.take() {
        return Ok(Some(regions));
    }
    let bytes = match &message.image {
        Some(ImageSource::Bytes(bytes)) => bytes.as_slice(),
        Some(ImageSource::Payload) => payload.unwrap_or_default(),
        Some(ImageSource::Url(_)) | None => return Ok(None),
    };
    let objects = image_to_objects(bytes, &inner.image, &inner.extractor)?;
    // The bytes are not needed any more; drop them before the message travels on.
    message.image = None;
    Ok(Some(objects))
}

/// The text or caption of a record, for training the tokenizer on a bootstrap sample: `None`
/// for image records and records without usable text.
pub fn bootstrap_text(kind: RecordKind, payload: Option<&[u8]>) -> Option<String> {
    let key = match kind {
        RecordKind::Text => "text",
        RecordKind::Pair => "caption",
        RecordKind::Image => return None,
    };
    let value: Value = serde_json::from_slice(payload?).ok()?;
    let text = normalize_text(value.get(key)?.as_str()?);
    (!text.is_empty()).then_some(text)
}

/// The pipeline could not deliver its outcomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the receiver of processed records was dropped")]
pub struct PipelineClosed;

#[derive(Default)]
struct PartitionOrder {
    next_in: u64,
    next_out: u64,
    done: BTreeMap<u64, Processed>,
}

/// Processes records from `input` with up to `max_in_flight` of them between input and output
/// (running, or finished and waiting for an earlier record of their partition), and sends
/// every outcome to `output` in per-partition order. Returns when `input` is closed and
/// everything received has been sent, or with [`PipelineClosed`] when `output` is dropped.
/// Reading from `input` stops while the bound is reached or `output` is full, which is the
/// backpressure the consumer sees.
pub async fn run_pipeline(
    preprocessor: Preprocessor,
    mut input: mpsc::Receiver<RawRecord>,
    output: mpsc::Sender<Processed>,
    max_in_flight: usize,
) -> Result<(), PipelineClosed> {
    let max_in_flight = max_in_flight.max(1);
    let mut running = FuturesUnordered::new();
    let mut order: HashMap<TopicPartition, PartitionOrder> = HashMap::new();
    let mut in_flight = 0usize;
    let mut input_open = true;
    loop {
        if !input_open && in_flight == 0 {
            return Ok(());
        }
        tokio::select! {
            biased;
            Some((key, seq, processed)) = running.next(), if !running.is_empty() => {
                let key: TopicPartition = key;
                let Some(partition) = order.get_mut(&key) else { continue };
                partition.done.insert(seq, processed);
                while let Some(ready) = partition.done.remove(&partition.next_out) {
                    partition.next_out += 1;
                    in_flight -= 1;
                    output.send(ready).await.map_err(|_| PipelineClosed)?;
                }
            }
            received = input.recv(), if input_open && in_flight < max_in_flight => {
                match received {
                    Some(raw) => {
                        let key = raw.pos.tp.clone();
                        let partition = order.entry(key.clone()).or_default();
                        let seq = partition.next_in;
                        partition.next_in += 1;
                        in_flight += 1;
                        let pre = preprocessor.clone();
                        running.push(async move { (key, seq, pre.process(raw).await) });
                    }
                    None => input_open = false,
                }
            }
            else => return Ok(()),
        }
    }
}
