//! The subcommands other than `run` (which is [`crate::run`]); [`crate::cli`] parses
//! configuration, sets up logging and the runtime, and maps their errors to exit codes.

pub mod caption;
pub mod checkpoint;
pub mod embed;
pub mod eval;
pub mod produce;
