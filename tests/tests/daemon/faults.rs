//! Faults and hostile input (issue 9): a dead-letter topic that is missing or refuses a copy,
//! hostile numbers in detector regions, a drain under a backlog with a slow model, a full disk
//! under the checkpoint store, and who may read checkpoint data over HTTP.

use std::time::{Duration, Instant};

use base64::Engine as _;
use unimod_e2e::synth::SynthConfig;
use unimod_e2e::Broker;

use crate::harness::{counts, http_get, latest_over_http, wait_for, Setup, Topics};

fn stream(seed: u64) -> SynthConfig {
    SynthConfig { seed, size: 32, pairs: 48, texts: 32, images: 16, eval: 0, image_files: false, bad: false, holdout: 0 }
}

/// Replaces `from` by `to` in the setup's config file (the harness writes every section once).
fn edit_config(setup: &Setup, from: &str, to: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&setup.config)?;
    anyhow::ensure!(text.contains(from), "config has no {from:?}");
    std::fs::write(&setup.config, text.replacen(from, to, 1))?;
    Ok(())
}

async fn wait_for_counts(setup: &Setup, want: (u64, u64, u64, u64), timeout: Duration) -> Option<serde_json::Value> {
    wait_for(timeout, async || latest_over_http(setup).await.filter(|m| counts(m) == want)).await
}

/// The value of an unlabelled metric (or the sum of its series) in `/metrics`.
async fn metric(setup: &Setup, name: &str) -> Option<f64> {
    let (_, body) = http_get(&setup.url("/metrics")).await?;
    let mut sum = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ')?;
        if key == name || key.starts_with(&format!("{name}{{")) {
            *sum.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    sum
}

fn b64_f32(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A missing dead-letter topic stops the start with exit 2 and one line naming the topic and
/// the key (it used to stall every partition at the first rejected record, while ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_topic_stops_the_start_with_exit_2() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let mut topics = Topics::create(&broker, 1).await?;
    topics.dead_letter = unimod_e2e::kafka::random_name("never-created-dlq");
    let setup = Setup::new(&broker.brokers(), &topics, "unimo", "")?;
    let mut manifest_cfg = stream(11);
    manifest_cfg.bad = true;
    setup.publish_synthetic(&broker.brokers(), &topics, &manifest_cfg).await?;
    let mut daemon = setup.start(&[], &[])?;
    let status = daemon.wait(Duration::from_secs(90))?;
    let log = daemon.log_text();
    assert_eq!(status.code(), Some(2), "exit status {status}; log:\n{}", daemon.log_tail(3000));
    let line = log
        .lines()
        .find(|l| l.contains("kafka.dead_letter_topic"))
        .unwrap_or_else(|| panic!("no line naming kafka.dead_letter_topic:\n{log}"));
    assert!(line.contains(&topics.dead_letter), "the line does not name the topic: {line}");
    Ok(())
}

/// A rejected record whose dead-letter copy the producer refuses for good (larger than
/// `message.max.bytes`) gets a headers-only copy and is finished; every later record is
/// trained. (It used to be retried for ever, stopping every partition.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_dead_letter_copy_blocks_no_other_record() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::create(&broker, 1).await?;
    let setup = Setup::new(&broker.brokers(), &topics, "unimo", "")?;
    // The dead-letter producer (and only it produces) refuses records above 8000 bytes.
    edit_config(&setup, r#"options = { "session.timeout.ms""#, r#"options = { "message.max.bytes" = "8000", "session.timeout.ms""#)?;
    // Hostile records first: empty texts padded to 20 KB (rejected: empty_text), then the
    // good stream behind them on the same partitions.
    let producer = unimod_e2e::kafka::producer(&broker.brokers())?;
    let pad = "x".repeat(20_000);
    let hostile: Vec<Vec<u8>> =
        (0..3).map(|i| serde_json::json!({"id": format!("big-{i}"), "text": " ", "pad": pad}).to_string().into_bytes()).collect();
    unimod_e2e::kafka::produce_to_partition(&producer, &topics.text, 0, &hostile).await?;
    let manifest = setup.publish_synthetic(&broker.brokers(), &topics, &stream(12)).await?;
    let want = (manifest.texts as u64, manifest.images as u64, manifest.pairs as u64, 3);

    let mut daemon = setup.start(&[], &[])?;
    let done = wait_for_counts(&setup, want, Duration::from_secs(180)).await;
    assert!(done.is_some(), "lineage never reached {want:?}; last {:?}; log:\n{}",
        latest_over_http(&setup).await.map(|m| counts(&m)), daemon.log_tail(4000));
    let dropped = metric(&setup, "unimod_dead_letter_value_dropped_total").await.unwrap_or(0.0);
    let failed = metric(&setup, "unimod_dead_letter_failures_total").await.unwrap_or(0.0);
    daemon.signal("TERM");
    assert!(daemon.wait(Duration::from_secs(40))?.success(), "{}", daemon.log_tail(3000));
    assert_eq!((dropped, failed), (3.0, 0.0), "value-dropped copies and failures");

    let copies = unimod_e2e::kafka::read_all(&broker.brokers(), &topics.dead_letter, Duration::from_secs(10))?;
    assert_eq!(copies.len(), 3, "one copy per hostile record");
    for c in &copies {
        assert_eq!(c.payload, None, "the copy carries no value");
        assert_eq!(c.header("unimod-value-dropped").as_deref(), Some("too_large"));
        assert!(c.header("unimod-error").is_some_and(|e| e.starts_with("empty_text")), "{:?}", c.headers);
        assert_eq!(c.header("unimod-source-topic").as_deref(), Some(topics.text.as_str()));
    }
    Ok(())
}

/// Detector regions with finite but enormous features (3e38) are rejected at ingest
/// (`invalid_regions`); every good record, regions with ordinary values included, is trained
/// exactly once and no step is non-finite. (They used to overflow the `[IMG]` row's mean,
/// make steps non-finite and be counted as trained.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_region_features_are_rejected_and_every_good_record_trained_once() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::create(&broker, 1).await?;
    let setup = Setup::new(&broker.brokers(), &topics, "unimo", "")?;
    let manifest = setup.publish_synthetic(&broker.brokers(), &topics, &stream(13)).await?;
    // The model's feature width with the harness's crop_size = 4.
    let dim = 48;
    let regions = |value: f32| {
        serde_json::json!({"image_w": 32, "image_h": 32, "boxes": [[0, 0, 16, 16], [16, 16, 32, 32]],
            "dim": dim, "features_base64": b64_f32(&vec![value; 2 * dim])})
    };
    let mut records = Vec::new();
    for i in 0..12 {
        // Alternate hostile and ordinary regions; the URL is never fetched (regions win).
        let value = if i % 2 == 0 { 3e38 } else { 0.5 };
        let v = serde_json::json!({"id": format!("regions-{i}"), "caption": "a red circle above a blue square",
            "image_url": "http://127.0.0.1:9/never.png", "regions": regions(value)});
        records.push(v.to_string().into_bytes());
    }
    let producer = unimod_e2e::kafka::producer(&broker.brokers())?;
    unimod_e2e::kafka::produce_to_partition(&producer, &topics.pair, 0, &records).await?;
    let want = (manifest.texts as u64, manifest.images as u64, manifest.pairs as u64 + 6, 6);

    let mut daemon = setup.start(&[], &[])?;
    let done = wait_for_counts(&setup, want, Duration::from_secs(180)).await;
    assert!(done.is_some(), "lineage never reached {want:?}; last {:?}; log:\n{}",
        latest_over_http(&setup).await.map(|m| counts(&m)), daemon.log_tail(4000));
    // Nothing beyond: wait a little more, the counts must not move.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = latest_over_http(&setup).await.map(|m| counts(&m));
    assert_eq!(after, Some(want), "counts moved past the expected totals");
    assert_eq!(metric(&setup, "unimod_nonfinite_steps_total").await, Some(0.0), "non-finite steps");
    daemon.signal("TERM");
    assert!(daemon.wait(Duration::from_secs(40))?.success(), "{}", daemon.log_tail(3000));
    let copies = unimod_e2e::kafka::read_all(&broker.brokers(), &topics.dead_letter, Duration::from_secs(10))?;
    let invalid = copies.iter().filter(|c| c.header("unimod-error").is_some_and(|e| e.starts_with("invalid_regions"))).count();
    assert_eq!(invalid, 6, "dead-letter copies of the hostile regions");
    Ok(())
}

/// SIGTERM with thousands of records queued and multi-second steps: exit 0 with a final
/// checkpoint within `shutdown.drain_seconds`; the queued records are abandoned and the next
/// run resumes from the final checkpoint. (The drain used to train the whole queue first
/// and overrun the budget.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_within_budget_with_a_backlog_and_a_slow_model() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::create(&broker, 2).await?;
    let setup = Setup::new(&broker.brokers(), &topics, "unimo", "")?;
    let budget = 20u64;
    edit_config(&setup, "drain_seconds = 30", &format!("drain_seconds = {budget}"))?;
    // A slower model and big batches: a step takes about a second or more here, so training
    // the ~2,000 records queued inside the daemon would take far longer than the budget.
    edit_config(&setup, "layers = 2\nhidden = 64\nheads = 2", "layers = 2\nhidden = 128\nheads = 2")?;
    edit_config(&setup, "batch_size = 16", "batch_size = 64\ngrad_accumulation = 4")?;
    let cfg = SynthConfig { seed: 14, size: 32, pairs: 0, texts: 3000, images: 0, eval: 0, image_files: false, bad: false, holdout: 0 };
    setup.publish_synthetic(&broker.brokers(), &topics, &cfg).await?;

    let mut daemon = setup.start(&[], &[])?;
    // Training has started and a backlog is queued: the consumer's queue (kafka.queue_capacity
    // = 1024 records) is far larger than the trainer's side (train.queue_capacity = 64), so
    // training the queue before stopping would take dozens of multi-second steps.
    let started = wait_for(Duration::from_secs(180), async || {
        let trained = latest_over_http(&setup).await.map(|m| counts(&m).0).unwrap_or(0);
        let queued = metric(&setup, "unimod_trainer_queue_items").await.unwrap_or(0.0);
        (trained > 0 && queued >= 32.0).then_some((trained, queued))
    })
    .await;
    assert!(started.is_some(), "never trained with a backlog; log:\n{}", daemon.log_tail(3000));
    let step_seconds = {
        let sum = metric(&setup, "unimod_train_step_seconds_sum").await.unwrap_or(0.0);
        let n = metric(&setup, "unimod_train_step_seconds_count").await.unwrap_or(1.0).max(1.0);
        sum / n
    };
    let t0 = Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait(Duration::from_secs(budget + 30))?;
    let drained = t0.elapsed();
    eprintln!("drain with backlog {started:?}, mean step {step_seconds:.2} s: exit {status} after {:.2} s (budget {budget} s)", drained.as_secs_f64());
    assert!(status.success(), "exit {status}; log:\n{}", daemon.log_tail(4000));
    assert!(drained < Duration::from_secs(budget + 2), "drain took {drained:?}, budget {budget} s");
    let log = daemon.log_text();
    assert!(crate::harness::logged_final_checkpoint(&log), "no final checkpoint:\n{}", daemon.log_tail(3000));
    let finals = setup.latest_checkpoint()?.expect("final checkpoint");
    assert!(counts(&finals).0 < 3000, "the backlog was abandoned, not trained: {:?}", counts(&finals));

    // The next run resumes from the final checkpoint and drains again within the budget.
    let mut daemon = setup.start(&[], &[])?;
    let resumed = wait_for(Duration::from_secs(90), async || {
        let log = daemon.log_text();
        log.contains("resuming from checkpoint").then_some(log)
    })
    .await
    .expect("resumed");
    assert!(resumed.contains(&format!("\"checkpoint\":{}", finals["id"])), "did not resume from the final checkpoint");
    let t0 = Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait(Duration::from_secs(budget + 30))?;
    eprintln!("second drain: exit {status} after {:.2} s", t0.elapsed().as_secs_f64());
    assert!(status.success() && t0.elapsed() < Duration::from_secs(budget + 2), "{}", daemon.log_tail(3000));
    Ok(())
}

/// A tmpfs mounted on `dir` (needs root); unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, bytes: u64) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file until it is full.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let block = vec![0u8; 1 << 16];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

/// Disk full under the store: checkpoint writes fail, `/readyz` turns 503, the daemon exits 1
/// after `2 x storage.max_failed_checkpoints` failures in a row, and the previous checkpoint
/// stays intact and loadable. Needs root for the tmpfs; skipped (with a note) without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_makes_the_daemon_unready_then_exit_1_keeping_the_last_checkpoint() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::create(&broker, 1).await?;
    let setup = Setup::new(&broker.brokers(), &topics, "unimo", "")?;
    let Some(_mnt) = Tmpfs::mount(&setup.store, 64 << 20) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return Ok(());
    };
    // Default storage.max_failed_checkpoints = 3: 503 after 3 failures in a row, exit 1 after 6.
    edit_config(&setup, "keep_checkpoints = 3", "keep_checkpoints = 2")?;
    let cfg = SynthConfig { seed: 15, size: 32, pairs: 400, texts: 2000, images: 100, eval: 0, image_files: false, bad: false, holdout: 0 };
    setup.publish_synthetic(&broker.brokers(), &topics, &cfg).await?;
    let mut daemon = setup.start(&[], &[])?;
    let first = wait_for(Duration::from_secs(120), async || {
        latest_over_http(&setup).await.filter(|m| counts(m).0 + counts(m).2 > 0)
    })
    .await;
    assert!(first.is_some(), "no checkpoint; log:\n{}", daemon.log_tail(3000));
    let filler = fill(&setup.store);
    let unready = wait_for(Duration::from_secs(60), async || {
        http_get(&setup.url("/readyz")).await.filter(|(s, body)| *s == 503 && body.contains("checkpoint"))
    })
    .await;
    let status = daemon.wait(Duration::from_secs(90))?;
    eprintln!("disk full: /readyz {unready:?}; exit {status}");
    assert!(unready.is_some(), "/readyz never said 503 for the failing checkpoints; log:\n{}", daemon.log_tail(3000));
    assert_eq!(status.code(), Some(1), "log:\n{}", daemon.log_tail(3000));
    assert!(daemon.log_text().contains("checkpoint writes in a row failed"), "{}", daemon.log_tail(2000));
    std::fs::remove_file(filler)?;
    // The newest checkpoint loads (verified) and a new run resumes from it.
    let kept = setup.latest_checkpoint()?.expect("a checkpoint survives");
    let mut daemon = setup.start(&[], &[])?;
    let resumed = wait_for(Duration::from_secs(90), async || {
        let log = daemon.log_text();
        log.contains("resuming from checkpoint").then_some(log)
    })
    .await;
    assert!(resumed.is_some_and(|l| l.contains(&format!("\"checkpoint\":{}", kept["id"]))), "{}", daemon.log_tail(3000));
    daemon.signal("TERM");
    assert!(daemon.wait(Duration::from_secs(40))?.success());
    Ok(())
}

/// Checkpoint data (blobs: weights and the replay buffer's raw training data) is served only
/// with the token from the store directory; metadata stays open; the CLI reads through the
/// daemon with the token and ignores `HTTP(S)_PROXY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_blobs_need_the_token_and_the_cli_ignores_proxies() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::create(&broker, 1).await?;
    let setup = Setup::new(&broker.brokers(), &topics, "unimo", "")?;
    setup.publish_synthetic(&broker.brokers(), &topics, &stream(16)).await?;
    let mut daemon = setup.start(&[], &[])?;
    let meta = wait_for(Duration::from_secs(120), async || latest_over_http(&setup).await).await;
    let meta = meta.unwrap_or_else(|| panic!("no checkpoint; log:\n{}", daemon.log_tail(3000)));
    let id = meta["id"].as_u64().expect("id");
    let url = setup.url(&format!("/v1/checkpoints/{id}/blobs/replay"));
    let (status, _) = http_get(&url).await.expect("answer");
    assert_eq!(status, 401, "the replay blob must not be served without the token");
    let token = std::fs::read_to_string(setup.store.join("http-token"))?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let resp = client.get(&url).bearer_auth(token.trim()).send().await?;
    assert_eq!(resp.status().as_u16(), 200);
    let len: u64 = resp.headers()["content-length"].to_str()?.parse()?;
    let body = resp.bytes().await?;
    assert_eq!(body.len() as u64, len, "streamed blob complete");

    // The CLI goes through the daemon (the store is locked) even with a dead proxy configured.
    let out = setup.dir.path().join("export");
    let cfg = setup.config.display().to_string();
    let output = std::process::Command::new(crate::harness::unimod_bin())
        .args(["checkpoint", "export", "latest", "--config", &cfg, "--out", &out.display().to_string()])
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("http_proxy", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("ALL_PROXY", "http://127.0.0.1:9")
        .output()?;
    assert!(output.status.success(), "export through a dead proxy: {}", String::from_utf8_lossy(&output.stderr));
    let exported = std::fs::read_dir(&out)?.flatten().filter(|e| e.metadata().is_ok_and(|m| m.len() > 0)).count();
    assert!(exported >= 3, "export wrote {exported} files");
    daemon.signal("TERM");
    assert!(daemon.wait(Duration::from_secs(40))?.success());
    Ok(())
}

/// A model that diverges from wherever it restarts (a learning rate of 1e30: every step after
/// the first update is non-finite for every example, so no record is a culprit) rolls back
/// after `train.max_nonfinite_in_row` steps, diverges again from the same checkpoint, and then
/// exits 1 naming the checkpoint and its offsets: never a silent loop of rollbacks, and the
/// records of the skipped steps are not counted as trained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_keeps_diverging_exits_1_instead_of_rolling_back_for_ever() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::create(&broker, 1).await?;
    let setup = Setup::new(&broker.brokers(), &topics, "unimo", "")?;
    edit_config(&setup, "learning_rate = 2e-3", "learning_rate = 1e30\nmax_nonfinite_in_row = 2")?;
    edit_config(&setup, "warmup_steps = 5", "warmup_steps = 1")?;
    let cfg = SynthConfig { seed: 16, size: 32, pairs: 400, texts: 200, images: 100, eval: 0, image_files: false, bad: false, holdout: 0 };
    let manifest = setup.publish_synthetic(&broker.brokers(), &topics, &cfg).await?;
    let mut daemon = setup.start(&[], &[])?;
    let status = daemon.wait(Duration::from_secs(180))?;
    let log = daemon.log_text();
    let rollbacks = log.matches("rolling back to the last checkpoint").count();
    eprintln!("diverging model: exit {status}, {rollbacks} rollbacks");
    assert_eq!(status.code(), Some(1), "exit status {status}; log:\n{}", daemon.log_tail(4000));
    // Two rollbacks to the same checkpoint (plus, when the first session started a new
    // lineage, one to "none" before that checkpoint existed), then the stop.
    assert!((2..=3).contains(&rollbacks), "{rollbacks} rollbacks; log:\n{}", daemon.log_tail(4000));
    let line = log
        .lines()
        .find(|l| l.contains("twice in a row"))
        .unwrap_or_else(|| panic!("no line saying why it stopped:\n{}", daemon.log_tail(4000)));
    assert!(line.contains("offsets"), "the line names the offsets: {line}");
    // Nothing of the diverged steps is in the lineage: at most the first step's records.
    if let Some(meta) = setup.latest_checkpoint()? {
        let (t, i, p, _) = counts(&meta);
        assert!(t + i + p <= 64, "records counted as trained by a diverging model: {:?} of {:?}", counts(&meta), manifest);
    }
    Ok(())
}
