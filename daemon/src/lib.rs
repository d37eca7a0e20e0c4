//! unimod daemon library: configuration, training loop, checkpoints, HTTP, signals.
//! The `unimod` binary (`main.rs`) is a thin CLI over this library.

pub mod access;
pub mod checkpoint;
pub mod checkpoint_io;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dead_letter;
pub mod embed;
pub mod eval;
pub mod health;
pub mod http;
pub mod intake;
pub mod listen;
pub mod inspect;
pub mod metrics_text;
pub mod notify;
pub mod produce_cmd;
pub mod run;
pub mod serve;
pub mod telemetry;
pub mod warm_start;
pub mod train;
