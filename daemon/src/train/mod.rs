//! The training side of the daemon: the trainer thread and the state it owns.

pub mod batcher;
pub mod cmcl;
pub mod cooldown;
pub mod examples;
pub mod lineage;
pub mod mix;
pub mod nonfinite;
pub mod replay;
pub mod schedule;
pub mod worker;
