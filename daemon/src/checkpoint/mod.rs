//! The checkpoint store: atomic, verified checkpoints of the trainer in one sled database
//! (docs/interface.md section 4, issue 4 item 3).
//!
//! # What a checkpoint is
//! A [`CheckpointMeta`] record (step, fresh-record counts, per-partition next offsets, model
//! summary, free-form `extra` such as the schedule position) plus named blobs ("model",
//! "optimizer", "replay", "tokenizer", "config", ...), written together or not at all.
//!
//! What the trainer puts into a checkpoint and reads back ([`CheckpointJob`], [`Restored`],
//! the [`blob`] names) lives here too, with the writer thread ([`spawn_writer`]) that writes
//! checkpoints off the trainer thread and reports each durable one ([`Durable`]) so that its
//! offsets can be committed.
//!
//! # Layout and atomicity
//! Each checkpoint's blobs, cut into chunks each framed with a CRC-32 of its key and payload,
//! are a file of their own, `data/<id>.ckpt` ([`DataFile`]); three sled trees hold the rest:
//! `checkpoint.meta` one metadata record per id (itself checksummed, naming the data file),
//! `checkpoint.state` the id counter, and `checkpoint.data` the chunks of checkpoints written
//! before 2026-12-01 (still read). [`CheckpointStore::write`] writes and fsyncs the data file,
//! flushes sled, then inserts the metadata record (the single write that makes the checkpoint
//! visible), then flushes again. A kill at any instant leaves the old set of checkpoints or the
//! old set plus the new one; a data file without a metadata record is invisible and deleted on
//! the next open or prune. Pruning removes the records durably first, then the files. Ids
//! strictly increase for the store's lifetime, across restarts, pruning and interrupted writes.
//!
//! # Verification
//! Loading checks every chunk's CRC, each blob's length and whole-blob CRC, and the metadata
//! record's CRC; a missing or truncated data file is a corrupt checkpoint.
//! [`CheckpointStore::load_latest_valid`] skips a newest checkpoint that fails with a `warn!`
//! naming it and returns the previous one. Because sled 0.34 recovers from a damaged log by
//! silently dropping everything after the damage, the id of the newest checkpoint is also
//! recorded in a small file outside sled (`newest-checkpoint.json`); a newest checkpoint that
//! vanished this way is reported with a warning too, never trained over in silence.
//!
//! # Why a file per checkpoint (measured, see BENCHMARKS.md "## Checkpoints")
//! In sled 0.34 itself, chunks above about 128 KiB become sled blob files it never reclaims
//! (the store grew to 14-23x the live bytes), 64 KiB chunks level off at 2.2-2.8x, a missing
//! sled blob file makes the whole database unopenable (a panic in sled's recovery), and a sled
//! database per checkpoint held more memory the longer the daemon ran (not diagnosed). A plain
//! file is written once, read sequentially, deleted whole, and its damage stays its own.
//! sled never fsyncs its blob files, so before each flush the writer fsyncs any it created.
//!
//! # Access while the daemon runs
//! sled allows one process per database, and [`CheckpointStore::open`] takes the directory
//! exclusively: a second opener gets [`CheckpointError::Locked`]. Inspection commands
//! (`unimod eval`, `unimod checkpoint list|show|export`) therefore open the store directly
//! when no daemon holds it, and on `Locked` ask the running daemon over its HTTP port, which
//! serves from its own `Arc<CheckpointStore>` with [`CheckpointStore::list`],
//! [`CheckpointStore::meta`], [`CheckpointStore::read_blob`] and the streaming
//! [`CheckpointStore::blob_chunks`] (reads never wait for a write in progress). A file copy
//! of a live sled directory is not a consistent snapshot, so no copy-based reader is offered.

mod blob_sync;
mod blobs;
mod chunk;
mod contents;
mod data_file;
mod error;
mod meta;
mod newest_record;
mod store;
mod writer;

pub use blobs::{BlobChunks, Blobs};
pub use contents::{blob, Restored};
pub use data_file::DataFile;
pub use error::CheckpointError;
pub use meta::{BlobMeta, CheckpointMeta, ModelSummary, RecordCounts};
pub use store::{CheckpointStore, StoreOptions, DEFAULT_CHUNK_SIZE};
pub use writer::{spawn_writer, CheckpointJob, CheckpointSink, Durable, StreamState};
