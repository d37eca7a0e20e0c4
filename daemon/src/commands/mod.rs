//! Subcommands that read a checkpoint and use the model: `caption` and `generate`.

pub mod caption;
