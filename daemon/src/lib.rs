//! unimod daemon library: configuration, training loop, checkpoints, HTTP, signals.
//! The `unimod` binary (`main.rs`) is a thin CLI over this library.

pub mod access;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dead_letter;
pub mod health;
pub mod http;
pub mod intake;
pub mod listen;
pub mod metrics_text;
pub mod notify;
pub mod run;
pub mod serve;
pub mod telemetry;
pub mod warm_start;
pub mod train;
