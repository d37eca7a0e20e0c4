//! The intake of `run`: the Kafka consumer, one preprocessing pipeline per record kind, and
//! the mixer that hands preprocessed records to the feeder in `train.mix` proportions.
//!
//! ```text
//! consumer --text--> [kafka.queue_capacity] -> preprocess -> [max_in_flight] --\
//!          --image-> [kafka.queue_capacity] -> preprocess -> [max_in_flight] ---> mixer -> [batch_size] -> feeder
//!          --pair--> [kafka.queue_capacity] -> preprocess -> [max_in_flight] --/
//! ```
//!
//! Each kind has its own queues, and the consumer pauses a kind alone when its queue is full
//! or its share of `kafka.queue_max_bytes` is used up, so small text records can no longer
//! fill the queues the images and pairs need. The mixer draws the next kind by the mix
//! weights among the kinds that have a record ready or on its way (in a queue, in
//! preprocessing, or waiting in Kafka), and waits for a drawn kind that is on its way (at most
//! [`WAIT_FOR_KIND`]); so with a backlog on every topic the batches follow the mix, and a
//! quiet topic never stalls the others. Rejected records pass at once (they are not part of
//! the mix). The mixer releases each record's bytes from the budget and drops the raw payload
//! of accepted records (only rejected ones need it, for their dead-letter copy).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use unimod_ingest::kafka::queue::record_bytes;
use unimod_ingest::kafka::{ConsumerError, KafkaConfig, KafkaConsumer, KafkaMetrics, Lanes, QueueBudget, StartOffsets};
use unimod_ingest::preprocess::{run_pipeline, Outcome, Preprocessor, Processed};
use unimod_ingest::record::RecordKind;

use crate::train::mix::{kind_index, weighted_pick};

/// Longest wait for a drawn kind whose records are on their way; after it the kind is left
/// out of the draws for as long again.
pub const WAIT_FOR_KIND: Duration = Duration::from_secs(1);

/// How long the mixer waits at start for the consumer's first look at the backlog.
const WAIT_FOR_BACKLOG: Duration = Duration::from_secs(3);

/// The running intake.
pub struct Intake {
    /// The consumer (commits, health).
    pub consumer: Arc<KafkaConsumer>,
    /// Preprocessed records in mix order, for the feeder.
    pub processed: mpsc::Receiver<Processed>,
    /// Ends when the consumer stopped and every queued record went through (or the feeder is
    /// gone).
    pub task: JoinHandle<()>,
}

/// Sizes and weights of the intake.
#[derive(Debug, Clone)]
pub struct IntakeParams {
    /// Records per preprocessing pipeline (and per kind between preprocessing and the mixer).
    pub max_in_flight: usize,
    /// Capacity of the mixer's output queue.
    pub output_capacity: usize,
    /// `train.mix` weights (text, image, pair).
    pub weights: [f64; 3],
    /// Seed of the mixer's draws.
    pub seed: u64,
}

/// Starts the consumer, the three pipelines and the mixer.
pub fn start(
    kafka: &KafkaConfig,
    start_offsets: StartOffsets,
    preprocessor: Preprocessor,
    metrics: KafkaMetrics,
    params: IntakeParams,
    stop: CancellationToken,
) -> Result<Intake, ConsumerError> {
    let budget = QueueBudget::new(kafka.queue_max_bytes);
    let mut senders = Vec::with_capacity(3);
    let mut raws = Vec::with_capacity(3);
    for _ in RecordKind::ALL {
        let (tx, rx) = mpsc::channel(kafka.queue_capacity);
        senders.push(tx);
        raws.push(rx);
    }
    let senders: [mpsc::Sender<_>; 3] = senders.try_into().unwrap_or_else(|_| unreachable!("three kinds"));
    let lanes = Lanes { senders, budget: Some(budget.clone()) };
    let consumer = Arc::new(KafkaConsumer::start_lanes(kafka, start_offsets, lanes, metrics, stop)?);
    let mut pipelines = Vec::with_capacity(3);
    let mut readies = Vec::with_capacity(3);
    for raw in raws {
        let (tx, rx) = mpsc::channel(params.max_in_flight.max(1));
        // Each ends when the consumer stops (it drops the sending side of `raw`).
        pipelines.push(tokio::spawn(run_pipeline(preprocessor.clone(), raw, tx, params.max_in_flight)));
        readies.push(rx);
    }
    let readies: [mpsc::Receiver<Processed>; 3] = readies.try_into().unwrap_or_else(|_| unreachable!("three kinds"));
    let (out_tx, out_rx) = mpsc::channel(params.output_capacity.max(1));
    let mixer = {
        let consumer = Arc::clone(&consumer);
        let on_the_way = move |kind: RecordKind| kafka_backlog(&consumer, kind);
        tokio::spawn(mix(readies, out_tx, params.weights, params.seed, budget, on_the_way))
    };
    let task = tokio::spawn(async move {
        for p in pipelines {
            let _ = p.await;
        }
        let _ = mixer.await;
    });
    Ok(Intake { consumer, processed: out_rx, task })
}

/// Records of `kind` waiting in Kafka, or `None` while the consumer has not looked yet.
fn kafka_backlog(consumer: &KafkaConsumer, kind: RecordKind) -> Option<i64> {
    consumer.backlog_known().then(|| consumer.waiting_in_kafka(kind))
}

/// Forwards one record: releases its bytes and drops the payload of an accepted one.
async fn forward(mut p: Processed, output: &mpsc::Sender<Processed>, budget: &QueueBudget) -> bool {
    budget.release(p.raw.kind, record_bytes(&p.raw));
    if matches!(p.outcome, Outcome::Ready(_)) {
        p.raw.payload = None;
        p.raw.key = None;
    }
    output.send(p).await.is_ok()
}

/// The mixer (see the module documentation). `in_kafka(kind)` says how many records of the
/// kind wait in Kafka (`None`: not known yet).
pub async fn mix(
    mut inputs: [mpsc::Receiver<Processed>; 3],
    output: mpsc::Sender<Processed>,
    weights: [f64; 3],
    seed: u64,
    budget: QueueBudget,
    in_kafka: impl Fn(RecordKind) -> Option<i64> + Send + 'static,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut heads: [Option<Processed>; 3] = [None, None, None];
    let mut open = [true; 3];
    let mut slow: [Option<Instant>; 3] = [None; 3];
    let started = Instant::now();
    loop {
        // Take what is there without waiting; rejected records pass at once.
        for i in 0..3 {
            while heads[i].is_none() && open[i] {
                match inputs[i].try_recv() {
                    Ok(p) if matches!(p.outcome, Outcome::Rejected(_)) => {
                        if !forward(p, &output, &budget).await {
                            return;
                        }
                    }
                    Ok(p) => heads[i] = Some(p),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open[i] = false,
                }
            }
        }
        if heads.iter().all(Option::is_none) && !open.iter().any(|o| *o) {
            return;
        }
        let ready: Vec<usize> = (0..3).filter(|&i| heads[i].is_some()).collect();
        let mut backlog_unknown = false;
        let coming: Vec<usize> = RecordKind::ALL
            .into_iter()
            .filter(|&kind| {
                let i = kind_index(kind);
                if heads[i].is_some() || !open[i] || slow[i].is_some_and(|t| t.elapsed() < WAIT_FOR_KIND) {
                    return false;
                }
                let kafka = in_kafka(kind);
                backlog_unknown |= kafka.is_none();
                budget.in_transit(kind) > 0 || kafka.unwrap_or(0) > 0
            })
            .map(kind_index)
            .collect();
        let candidates: Vec<usize> = ready.iter().chain(coming.iter()).copied().collect();
        let pick = weighted_pick(&mut rng, &candidates, &weights).or_else(|| ready.first().copied());
        let wait_for_backlog = backlog_unknown && started.elapsed() < WAIT_FOR_BACKLOG;
        match pick {
            Some(i) if heads[i].is_some() && !(wait_for_backlog && ready.len() < 3) => {
                let Some(p) = heads[i].take() else { continue };
                if !forward(p, &output, &budget).await {
                    return;
                }
            }
            pick => {
                // Nothing to forward yet, or the drawn kind is on its way (or the backlog is
                // not known yet at start): wait for a record (of the drawn kind when there is
                // one), at most WAIT_FOR_KIND.
                let wait = if wait_for_backlog { Duration::from_millis(50) } else { WAIT_FOR_KIND };
                let target = pick.filter(|&i| heads[i].is_none());
                let received = tokio::time::timeout(wait, async {
                    match target {
                        Some(i) => (i, inputs[i].recv().await),
                        None => {
                            // Only inputs without a head: a received record never replaces one.
                            let empty = [open[0] && heads[0].is_none(), open[1] && heads[1].is_none(), open[2] && heads[2].is_none()];
                            recv_any(&mut inputs, &empty).await
                        }
                    }
                })
                .await;
                match received {
                    Ok((i, Some(p))) => {
                        debug_assert!(heads[i].is_none(), "a head is never replaced");
                        if matches!(p.outcome, Outcome::Rejected(_)) {
                            if !forward(p, &output, &budget).await {
                                return;
                            }
                        } else {
                            heads[i] = Some(p);
                        }
                    }
                    Ok((i, None)) => open[i] = false,
                    Err(_elapsed) => {
                        if let Some(i) = target.filter(|_| !wait_for_backlog) {
                            slow[i] = Some(Instant::now());
                        }
                    }
                }
            }
        }
    }
}

/// The next record from any input marked in `from` (pending forever when none is).
async fn recv_any(inputs: &mut [mpsc::Receiver<Processed>; 3], open: &[bool; 3]) -> (usize, Option<Processed>) {
    let [a, b, c] = inputs;
    tokio::select! {
        r = a.recv(), if open[0] => (0, r),
        r = b.recv(), if open[1] => (1, r),
        r = c.recv(), if open[2] => (2, r),
        else => std::future::pending().await,
    }
}
