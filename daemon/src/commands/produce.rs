//! `unimod produce`: publishes JSONL files (or image files and folders) with a progress bar
//! on a terminal and a summary line at the end; exits non-zero when any message was not
//! acknowledged.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use unimod_ingest::kafka::{produce as produce_records, ProduceProgress, ProduceRequest};
use unimod_ingest::record::RecordKind;

use crate::cli::CliError;

/// Runs `unimod produce`.
pub async fn produce(brokers: &str, kind: RecordKind, topic: Option<String>, inputs: &[PathBuf]) -> Result<(), CliError> {
    let mut request = ProduceRequest::new(brokers, kind, inputs.to_vec());
    request.topic = topic;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} acked ({per_sec}, eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(request.topic());
        Some(bar)
    } else {
        None
    };
    let mut on_progress = |p: &ProduceProgress| {
        if let Some(bar) = &bar {
            bar.set_length(p.total);
            bar.set_position(p.acknowledged + p.failed);
        }
    };
    let result = produce_records(&request, &mut on_progress).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let summary = result.map_err(|e| {
        use unimod_ingest::kafka::ProduceError as E;
        match e {
            e @ (E::NoInput(_) | E::Io { .. } | E::InvalidLines(_) | E::Config(_)) => CliError::usage(e.to_string()),
            e => CliError::runtime(e),
        }
    })?;
    println!("{summary}");
    if summary.all_acknowledged() {
        Ok(())
    } else {
        Err(CliError::runtime(anyhow::anyhow!(
            "{} of {} messages were not acknowledged by the broker",
            summary.failed + (summary.sent - summary.acknowledged - summary.failed),
            summary.sent
        )))
    }
}
