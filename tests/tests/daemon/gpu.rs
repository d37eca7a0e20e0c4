//! The GPU code path through the real daemon (issue 8): `unimod run` with
//! `train.device = "wgpu"` — CubeCL with fusion and autotune, on Mesa's software Vulkan
//! driver (llvmpipe) in CI — trains 30 steps against the broker with a falling loss.
//!
//! Needs a `unimod` built with `--features wgpu` as `UNIMOD_BIN`; `scripts/test.sh` builds
//! it and runs this test with `--ignored`.

use std::process::Command;
use std::time::{Duration, Instant};

use unimod_e2e::synth::SynthConfig;
use unimod_e2e::Broker;

use crate::harness::{http_get, unimod_bin, Setup, Topics};

/// The value of a metric line `name{labels} value` (the first match of `prefix`).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs UNIMOD_BIN built with --features wgpu and a Vulkan adapter (scripts/test.sh runs it)"]
async fn wgpu_daemon_trains_30_steps_with_a_falling_loss() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::create(&broker, 1).await?;
    let setup = Setup::new(&broker.brokers(), &topics, "unimo", "")?;
    // More records than 30 steps of 16 take.
    let cfg = SynthConfig { seed: 5, size: 32, pairs: 400, texts: 80, images: 40, eval: 0, image_files: false, bad: false, holdout: 0 };
    setup.publish_synthetic(&broker.brokers(), &topics, &cfg).await?;
    let env = [("UNIMOD_TRAIN__DEVICE", "wgpu")];

    // check-config names the adapter.
    let out = Command::new(unimod_bin())
        .args(["check-config", "--config"])
        .arg(&setup.config)
        .envs(env)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check-config: {err}");
    assert!(err.contains("adapter present"), "check-config does not report the adapter: {err}");

    let started = Instant::now();
    let mut daemon = setup.start(&["--max-steps", "30"], &env)?;
    // (step, total loss) as the gauges move; the gauge holds the last step's loss.
    let mut history: Vec<(u64, f64)> = Vec::new();
    let mut build_info = String::new();
    let mut signatures = 0.0;
    loop {
        if let Some((200, text)) = http_get(&setup.url("/metrics")).await {
            let step = metric(&text, "unimod_train_steps_total").unwrap_or(0.0) as u64;
            let loss = metric(&text, "unimod_train_loss{objective=\"total\"}");
            if let Some(loss) = loss.filter(|_| step > 0 && history.last().is_none_or(|h| h.0 != step)) {
                history.push((step, loss));
            }
            if let Some(l) = text.lines().find(|l| l.starts_with("unimod_build_info")) {
                build_info = l.to_owned();
            }
            signatures = metric(&text, "unimod_train_shape_signatures").unwrap_or(signatures);
        }
        // llvmpipe runs every kernel on the CPU and autotunes each new shape: 30 steps took
        // about 15 minutes beside a build on this project's 2-core machines.
        if daemon.log_text().contains("stopped cleanly") || started.elapsed() > Duration::from_secs(1800) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = daemon.wait(Duration::from_secs(60))?;
    let log = daemon.log_text();
    assert!(status.success(), "exit {status}; log:\n{}", daemon.log_tail(3000));
    eprintln!("wgpu run: {:.1} s for 30 steps; {build_info}; {signatures} shape signatures", started.elapsed().as_secs_f64());
    eprintln!("losses by step: {history:?}");
    assert!(build_info.contains("backend=\"wgpu\"") && build_info.contains("fusion=\"true\""), "{build_info}");
    let adapter = log.lines().find(|l| l.contains("training device")).unwrap_or_default();
    assert!(adapter.contains("adapter"), "no adapter in the start log: {}", daemon.log_tail(3000));
    eprintln!("{adapter}");
    assert!(history.len() >= 8, "too few steps observed: {history:?}");
    let k = 4;
    let first: f64 = history[..k].iter().map(|h| h.1).sum::<f64>() / k as f64;
    let last: f64 = history[history.len() - k..].iter().map(|h| h.1).sum::<f64>() / k as f64;
    assert!(last < 0.9 * first, "loss did not fall: {first:.3} -> {last:.3}: {history:?}");
    assert!((1.0..=12.0).contains(&signatures), "{signatures} shape signatures in 30 steps");
    Ok(())
}
