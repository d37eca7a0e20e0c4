//! unimod daemon library: configuration, training loop, checkpoints, HTTP, signals.
//! The `unimod` binary (`main.rs`) is a thin CLI over this library.

pub mod checkpoint;
