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
//! Three sled trees: `checkpoint.data` holds every blob cut into chunks, keyed by
//! `(id, blob index, chunk index)` and each framed with a CRC-32 of key and payload;
//! `checkpoint.meta` holds one metadata record per id (itself checksummed);
//! `checkpoint.state` holds the id counter. [`CheckpointStore::write`] inserts all chunks,
//! flushes (fsync), then inserts the metadata record (the single write that makes the
//! checkpoint visible), then flushes again. A kill at any instant leaves the old set of
//! checkpoints or the old set plus the new one; chunks without a metadata record are
//! invisible and deleted on the next open or prune. Ids strictly increase for the store's
//! lifetime, across restarts, pruning and interrupted writes.
//!
//! # Verification
//! Loading checks every chunk's CRC, each blob's length and whole-blob CRC, and the metadata
//! record's CRC. [`CheckpointStore::load_latest_valid`] skips a newest checkpoint that fails
//! with a `warn!` naming it and returns the previous one. Because sled 0.34 recovers from a
//! damaged log by silently dropping everything after the damage, the id of the newest
//! checkpoint is also recorded in a small file outside sled (`newest-checkpoint.json`); a
//! newest checkpoint that vanished this way is reported with a warning too, never trained
//! over in silence.
//!
//! # Chunk size, chosen by measurement (sled 0.34.7, see BENCHMARKS.md "## Checkpoints")
//! Values above about 128 KiB (a quarter of sled's 512 KiB segment) are stored by sled as
//! separate blob files that it fails to reclaim: with 128 KiB, 1 MiB or 4 MiB chunks the
//! store grew to 14-23x the live bytes after 20 checkpoints with 3 kept, and kept growing.
//! With 64 KiB chunks it levels off at 2.2-2.8x (peaks below 3x for checkpoints of 16 MB
//! and more); 4-8 KiB chunks avoid sled blob files entirely but level off at 3.2-4.3x. So
//! [`DEFAULT_CHUNK_SIZE`] is 64 KiB, and a unit test holds the 3x bound.
//!
//! sled never fsyncs its blob files (it stores leaf pages holding several chunks as such
//! files), so before each flush the writer fsyncs the blob files created since the last one:
//! without it a power failure could leave the log naming data that never reached the disk.
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
mod error;
mod meta;
mod newest_record;
mod store;
mod writer;

pub use blobs::{BlobChunks, Blobs};
pub use contents::{blob, Restored};
pub use error::CheckpointError;
pub use meta::{BlobMeta, CheckpointMeta, ModelSummary, RecordCounts};
pub use store::{CheckpointStore, StoreOptions, DEFAULT_CHUNK_SIZE};
pub use writer::{spawn_writer, CheckpointJob, CheckpointSink, Durable, StreamState};
