//! Serving from the running daemon (`[serve]`) and the `caption` / `generate` commands while
//! `run` trains: the routes answer, snapshots follow training, bad input gets 4xx with a
//! reason, and the serving metrics are exported.

use std::time::Duration;

use unimod_e2e::synth::SynthConfig;
use unimod_e2e::Broker;

use crate::harness::{free_port, http_get, latest_over_http, wait_for, Setup, Topics};

async fn post(url: &str, body: impl Into<reqwest::Body>) -> anyhow::Result<(u16, serde_json::Value)> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let resp = client.post(url).header("content-type", "application/json").body(body).send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Ok((status, value))
}

/// The value of the first series of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn stream(seed: u64, pairs: usize, eval: usize) -> SynthConfig {
    SynthConfig { seed, size: 32, pairs, texts: 32, images: 16, eval, image_files: false, bad: false, holdout: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_routes_answer_while_run_trains() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::create(&broker, 1).await?;
    let serve_port = free_port();
    let extra = format!(
        "\n[serve]\nlisten = \"127.0.0.1:{serve_port}\"\nrefresh_steps = 2\nmax_body_bytes = 65536\ntimeout_seconds = 60\n"
    );
    let setup = Setup::new(&broker.brokers(), &topics, "unimo", &extra)?;
    setup.publish_synthetic(&broker.brokers(), &topics, &stream(5, 160, 4)).await?;
    let eval_file = setup.dir.path().join("data/eval_pairs.jsonl");
    let eval_pairs = std::fs::read_to_string(&eval_file)?;
    let held_out = setup.dir.path().join("held_out.jsonl");
    std::fs::write(&held_out, &eval_pairs)?;
    let first: serde_json::Value = serde_json::from_str(eval_pairs.lines().next().expect("a held-out pair"))?;
    let image_b64 = first["image_base64"].as_str().expect("base64 image").to_owned();

    let mut daemon = setup.start(&[], &[])?;
    let url = |route: &str| format!("http://127.0.0.1:{serve_port}{route}");

    // The routes answer once the first snapshot exists (taken when the trainer starts).
    let ready = wait_for(Duration::from_secs(180), async || {
        match post(&url("/v1/generate"), r#"{"prompt": "a red circle"}"#).await {
            Ok((200, v)) => Some(v),
            _ => None,
        }
    })
    .await;
    let generated = ready.ok_or_else(|| anyhow::anyhow!("/v1/generate never answered 200; log:\n{}", daemon.log_tail(4000)))?;
    assert!(generated["text"].is_string() && generated["step"].is_u64(), "{generated}");
    let step_before = generated["step"].as_u64().unwrap_or(0);

    let (status, v) = post(&url("/v1/embed"), r#"{"text": "a small blue square on the left"}"#).await?;
    assert_eq!(status, 200, "{v}");
    let vector: Vec<f64> = serde_json::from_value(v["vector"].clone())?;
    let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(!vector.is_empty() && (norm - 1.0).abs() < 1e-3, "normalised vector, norm {norm}");
    assert_eq!(v["dim"].as_u64(), Some(vector.len() as u64));
    let (status, v) = post(&url("/v1/embed"), serde_json::json!({ "image_base64": image_b64 }).to_string()).await?;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["input"], "image");
    let (status, v) = post(&url("/v1/caption"), serde_json::json!({ "image_base64": image_b64, "beam": 2 }).to_string()).await?;
    assert_eq!(status, 200, "{v}");
    assert!(v["caption"].is_string() && v["step"].is_u64(), "{v}");

    // Bad input: 4xx with a one-line reason, and the daemon keeps training.
    for (route, body, want) in [
        ("/v1/embed", "{}".to_owned(), 400),
        ("/v1/embed", "not json".to_owned(), 400),
        ("/v1/embed", r#"{"text": "a", "image_url": "http://127.0.0.1:1/x.png"}"#.to_owned(), 400),
        ("/v1/caption", r#"{"image_base64": "!!!not base64"}"#.to_owned(), 400),
        ("/v1/caption", r#"{"image_url": "ftp://example.invalid/x.png"}"#.to_owned(), 400),
        ("/v1/caption", serde_json::json!({ "image_base64": image_b64, "beam": 0 }).to_string(), 400),
        ("/v1/generate", r#"{"prompt": "   "}"#.to_owned(), 400),
        ("/v1/generate", r#"{"prompt": "a", "surprise": 1}"#.to_owned(), 400),
        ("/v1/generate", format!(r#"{{"prompt": "{}"}}"#, "x".repeat(70_000)), 413),
    ] {
        let (status, v) = post(&url(route), body).await?;
        assert_eq!(status, want, "{route}: {v}");
        let reason = v["error"].as_str().unwrap_or_default();
        assert!(!reason.is_empty() && !reason.contains('\n'), "{route}: one-line reason: {v}");
    }

    // More data: training goes on and the served snapshot follows it.
    setup.publish_synthetic(&broker.brokers(), &topics, &stream(6, 160, 0)).await?;
    let later = wait_for(Duration::from_secs(180), async || {
        match post(&url("/v1/generate"), r#"{"prompt": "a green triangle"}"#).await {
            Ok((200, v)) if v["step"].as_u64().unwrap_or(0) > step_before => Some(v),
            _ => None,
        }
    })
    .await;
    assert!(later.is_some(), "the served step never moved past {step_before}; log:\n{}", daemon.log_tail(4000));

    // The commands read the checkpoint through the running daemon: wait for its first one
    // (every 5 steps here; the served snapshot moves every 2, so it can come first on a
    // loaded machine: CI saw "the store holds no valid checkpoint" once).
    let checkpointed = wait_for(Duration::from_secs(180), async || latest_over_http(&setup).await).await;
    assert!(checkpointed.is_some(), "no checkpoint while training; log:\n{}", daemon.log_tail(4000));
    let cfg = setup.config.display().to_string();
    let (status, out, err) = setup.command(&["caption", "--config", &cfg, "--json", "--pairs", &held_out.display().to_string()])?;
    assert!(status.success(), "caption while running: {err}");
    let lines: Vec<serde_json::Value> = out.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 5, "4 captions and the scores: {out}");
    for l in &lines[..4] {
        assert!(l["id"].as_str().is_some_and(|id| id.starts_with("eval-")), "{l}");
        assert!(l["caption"].is_string() && l["reference"].is_string(), "{l}");
    }
    assert_eq!(lines[4]["images"], 4);
    assert!(lines[4]["bleu4"].is_number() && lines[4]["cider"].is_number(), "{}", lines[4]);
    let (status, out, err) = setup.command(&["generate", "--config", &cfg, "--prompt", "a large", "--json"])?;
    assert!(status.success(), "generate while running: {err}");
    let g: serde_json::Value = serde_json::from_str(out.trim())?;
    assert!(g["text"].is_string() && g["step"].is_u64(), "{g}");

    let (_, metrics) = http_get(&setup.url("/metrics")).await.expect("metrics");
    assert!(
        metric(&metrics, "unimod_serve_requests_total", &[r#"code="200""#, r#"route="embed""#]).is_some_and(|v| v >= 2.0),
        "serve request counter"
    );
    assert!(
        metric(&metrics, "unimod_serve_requests_total", &[r#"code="413""#, r#"route="generate""#]) == Some(1.0),
        "4xx counted"
    );
    assert!(metrics.contains("unimod_serve_seconds_bucket"), "latency histogram");
    assert!(metric(&metrics, "unimod_serve_snapshot_step", &[]).is_some_and(|v| v > step_before as f64));
    assert!(metrics.contains(r#"unimod_train_loss{objective="caption"}"#), "caption loss exported");

    daemon.signal("TERM");
    let status = daemon.wait(Duration::from_secs(40))?;
    assert!(status.success(), "exit {status}; log:\n{}", daemon.log_tail(3000));
    Ok(())
}
