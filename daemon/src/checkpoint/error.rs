//! Errors of the checkpoint store, as one enum whose variants callers branch on: `Locked`
//! (another process holds the store: ask the running daemon over HTTP instead), `NotFound`,
//! `Corrupt` (skip to an older checkpoint) and the rest (fatal storage trouble).

use std::path::PathBuf;

/// What went wrong in the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Another process (normally a running `unimod run`) holds the store. sled allows one
    /// process per database, so inspection commands must go through the daemon's HTTP port.
    #[error("checkpoint store {path} is locked by another process (is `unimod run` using it?)")]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The store directory could not be created, locked or opened.
    #[error("cannot open checkpoint store {path}: {source}")]
    Open {
        /// The store directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// sled failed to open the database in the store directory.
    #[error("cannot open checkpoint database in {path}: {source}")]
    Database {
        /// The store directory.
        path: PathBuf,
        /// The underlying sled error.
        #[source]
        source: sled::Error,
    },
    /// A read, write or flush of the database failed.
    #[error("checkpoint store I/O failed: {0}")]
    Storage(#[from] sled::Error),
    /// No checkpoint with this id is stored (never written, or pruned).
    #[error("checkpoint {id} not found")]
    NotFound {
        /// The requested checkpoint id.
        id: u64,
    },
    /// The checkpoint exists but does not have a blob of this name.
    #[error("checkpoint {id} has no blob named {name:?}")]
    NoSuchBlob {
        /// The checkpoint id.
        id: u64,
        /// The requested blob name.
        name: String,
    },
    /// The checkpoint failed verification: a chunk is missing, has a bad checksum, or its
    /// metadata does not decode. An older checkpoint should be used instead.
    #[error("checkpoint {id} is corrupt: {reason}")]
    Corrupt {
        /// The checkpoint id.
        id: u64,
        /// What failed to verify.
        reason: String,
    },
    /// The caller asked for something the store cannot write (duplicate blob names, ...).
    #[error("invalid checkpoint: {0}")]
    Invalid(String),
}
