//! [`CheckpointStore`]: atomic, checksummed, chunked checkpoints in one sled database.
//!
//! Write protocol (one writer at a time, serialised by a mutex):
//! 1. allocate the next id (kept in the state tree, so ids never repeat, even after a crash
//!    or after pruning);
//! 2. insert every blob as fixed-size chunks in the data tree, each framed with a CRC;
//! 3. `flush` (fsync), so everything the checkpoint names is durable;
//! 4. insert the metadata record: this single write makes the checkpoint visible;
//! 5. `flush` again, so the checkpoint is durable when `write` returns.
//!
//! A kill at any point leaves either the old set of checkpoints or the old set plus the new
//! one: chunks without metadata are invisible and are deleted when the store is opened and
//! when it is pruned. Pruning deletes the metadata first, then the chunks, for the same reason.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{SecondsFormat, Utc};

use super::blob_sync::SyncedBlobs;
use super::blobs::{BlobChunks, Blobs};
use super::chunk::{ChunkKey, KEY_LEN};
use super::data_file::{self, FileChunks};
use super::error::CheckpointError;
use super::meta::{decode_meta, encode_meta, BlobMeta, CheckpointMeta};
use super::newest_record::NewestRecord;

/// Chunk payload size. Chosen by measurement (see the module header of `checkpoint` and
/// BENCHMARKS.md): sled 0.34 reclaims the space of removed 64 KiB values (the store levels
/// off at 2.1-2.8x the live bytes), but values above about 128 KiB become sled blob files
/// that it never reclaims (1 MiB chunks: 22x after 20 checkpoints, and growing).
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// Name of the lock file inside the store directory, held for the store's lifetime.
const LOCK_FILE: &str = "unimod.lock";
/// Tree holding one metadata record per checkpoint, keyed by id (u64 BE).
const META_TREE: &str = "checkpoint.meta";
/// Tree holding the chunks of every checkpoint, keyed by [`ChunkKey`].
const DATA_TREE: &str = "checkpoint.data";
/// Tree holding store-wide state (the id counter).
const STATE_TREE: &str = "checkpoint.state";
/// Key of the next id to hand out, in the state tree.
const NEXT_ID_KEY: &[u8] = b"next_id";

/// A decoded metadata record, or why it does not decode.
type MetaOrWhyNot = Result<CheckpointMeta, CheckpointError>;

/// Tuning knobs of the store; [`Default`] is what the daemon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Payload bytes per chunk (the sled value size). See [`DEFAULT_CHUNK_SIZE`].
    pub chunk_size: usize,
    /// sled's page cache budget in bytes. Checkpoints are written once and read rarely, so
    /// a small cache keeps the daemon's memory flat while writing large checkpoints.
    pub cache_capacity: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            cache_capacity: 64 * 1024 * 1024,
        }
    }
}

/// The checkpoint store: one sled database in a directory, held exclusively by one process.
/// `Send + Sync`: share it behind an `Arc` between the trainer (writes) and the HTTP server
/// (reads). Reads never block on a write in progress.
pub struct CheckpointStore {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    data: sled::Tree,
    state: sled::Tree,
    options: StoreOptions,
    /// The id of the newest checkpoint written, recorded outside sled.
    newest: NewestRecord,
    /// Serialises `write` and `prune` (and garbage collection), so chunks of a checkpoint
    /// being written are never mistaken for garbage.
    writer: Mutex<SyncedBlobs>,
    /// Checkpoints known to verify (written or fully read by this process), so that
    /// "which is the newest valid checkpoint" is answered without reading blobs again.
    verified: Mutex<BTreeSet<u64>>,
    /// Held (locked) for the store's lifetime; dropping it releases the lock.
    _lock: File,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CheckpointStore {
    /// Opens (creating if needed) the store in directory `path` with default options.
    ///
    /// # Errors
    /// [`CheckpointError::Locked`] when another process holds the store; other variants
    /// when the directory or database cannot be opened.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens (creating if needed) the store in directory `path`.
    ///
    /// Takes an exclusive lock, then deletes the chunks of checkpoints that were never made
    /// visible (a write interrupted by a crash).
    ///
    /// # Errors
    /// As [`CheckpointStore::open`]; [`CheckpointError::Invalid`] for a zero chunk size.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Self, CheckpointError> {
        if options.chunk_size == 0 {
            return Err(CheckpointError::Invalid(
                "chunk size must be positive".to_owned(),
            ));
        }
        let open_err = |source| CheckpointError::Open {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(path).map_err(open_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(open_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(CheckpointError::Locked {
                    path: path.to_owned(),
                })
            }
            Err(TryLockError::Error(e)) => return Err(open_err(e)),
        }
        let db = open_database(path, &options)?;
        let store = Self {
            path: path.to_owned(),
            meta: db.open_tree(META_TREE)?,
            data: db.open_tree(DATA_TREE)?,
            state: db.open_tree(STATE_TREE)?,
            db,
            options,
            newest: NewestRecord::new(path),
            writer: Mutex::new(SyncedBlobs::default()),
            verified: Mutex::new(BTreeSet::new()),
            _lock: lock,
        };
        {
            let _writing = store.lock_writer();
            // sled 0.34 can panic walking a tree whose page lives in a damaged blob file; the
            // collection is housekeeping, so the open goes on and the loads decide what is
            // readable (a damaged newest checkpoint is skipped there with a warning).
            let removed = match guard_sled(|| store.collect_garbage()) {
                Ok(removed) => removed,
                Err(e @ CheckpointError::Storage(_)) => {
                    tracing::warn!(
                        store = %path.display(),
                        error = %e,
                        "could not collect the chunks of unfinished checkpoints (store damaged?); going on"
                    );
                    0
                }
                Err(e) => return Err(e),
            };
            if removed > 0 {
                tracing::info!(
                    store = %path.display(),
                    removed,
                    "removed the data of checkpoints that were never completed"
                );
                store.db.flush()?;
            }
        }
        Ok(store)
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a checkpoint atomically and durably, and returns its metadata as stored.
    ///
    /// The store assigns `id`, `created_at`, `bytes` and `blobs`; every other field of
    /// `meta` is kept as given. `blobs` are named payloads ("model", "optimizer", "replay",
    /// "tokenizer", "config", ...), stored in the given order. When this returns `Ok`, the
    /// checkpoint is on disk and visible; when it fails or the process dies first, the store
    /// looks as if it had never been called.
    ///
    /// # Errors
    /// [`CheckpointError::Invalid`] for duplicate or empty blob names or a blob too large to
    /// index; [`CheckpointError::Storage`] when sled fails.
    pub fn write(
        &self,
        mut meta: CheckpointMeta,
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<CheckpointMeta, CheckpointError> {
        let mut names = BTreeSet::new();
        for (name, _) in &blobs {
            if name.is_empty() || !names.insert(name.as_str()) {
                return Err(CheckpointError::Invalid(format!(
                    "blob name {name:?} is empty or repeated"
                )));
            }
        }
        if u32::try_from(blobs.len()).is_err() {
            return Err(CheckpointError::Invalid("too many blobs".to_owned()));
        }
        let mut writing = self.lock_writer();
        let id = self.allocate_id()?;
        meta.id = id;
        meta.blobs = Vec::with_capacity(blobs.len());
        meta.bytes = 0;
        for (name, payload) in &blobs {
            let chunks = payload.len().div_ceil(self.options.chunk_size);
            let chunks = u32::try_from(chunks).map_err(|_| {
                CheckpointError::Invalid(format!("blob {name:?} has too many chunks"))
            })?;
            meta.blobs.push(BlobMeta {
                name: name.clone(),
                len: payload.len() as u64,
                chunks,
                crc32: crc32fast::hash(payload),
            });
            meta.bytes += payload.len() as u64;
        }
        // The chunks go to a file of their own, fsynced before the record that names it.
        let file = data_file::write(&self.path, id, &blobs, self.options.chunk_size)
            .map_err(|e| CheckpointError::Storage(sled::Error::Io(e)))?;
        drop(blobs);
        meta.data_file = Some(file);
        meta.created_at = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let record = encode_meta(&meta)?;
        // Everything the checkpoint names is durable before the record that makes it visible
        // (the data file is; the id counter in sled, and any sled blob file, now too).
        writing.sync_new(&self.path)?;
        self.db.flush()?;
        self.meta.insert(id.to_be_bytes(), record)?;
        writing.sync_new(&self.path)?;
        self.db.flush()?;
        self.mark_verified(id);
        if let Err(e) = self.newest.write(id) {
            // The checkpoint itself is durable; only the detection of a lost newest one suffers.
            tracing::warn!(checkpoint = id, error = %e, "cannot record the newest checkpoint id");
        }
        tracing::debug!(
            checkpoint = id,
            step = meta.step,
            bytes = meta.bytes,
            "checkpoint written"
        );
        Ok(meta)
    }

    /// Metadata of every stored checkpoint, newest first. A record that does not verify is
    /// left out with a warning.
    ///
    /// # Errors
    /// [`CheckpointError::Storage`] when sled fails.
    pub fn list(&self) -> Result<Vec<CheckpointMeta>, CheckpointError> {
        let mut out = Vec::new();
        for (id, meta) in self.scan_meta()? {
            match meta {
                Ok(meta) => out.push(meta),
                Err(e) => {
                    tracing::warn!(checkpoint = id, error = %e, "skipping unreadable checkpoint metadata")
                }
            }
        }
        Ok(out)
    }

    /// Metadata of checkpoint `id`, without reading or verifying its blobs.
    ///
    /// # Errors
    /// [`CheckpointError::NotFound`], [`CheckpointError::Corrupt`] (record damaged), or
    /// [`CheckpointError::Storage`].
    pub fn meta(&self, id: u64) -> Result<CheckpointMeta, CheckpointError> {
        match self.meta.get(id.to_be_bytes()) {
            Ok(Some(raw)) => decode_meta(id, &raw),
            Ok(None) => Err(CheckpointError::NotFound { id }),
            Err(sled::Error::Corruption { .. }) => Err(CheckpointError::Corrupt {
                id,
                reason: "metadata damaged on disk".to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Loads checkpoint `id`, verifying every chunk's CRC and every blob's length and CRC.
    ///
    /// # Errors
    /// [`CheckpointError::NotFound`] (also when it was pruned while being read),
    /// [`CheckpointError::Corrupt`], or [`CheckpointError::Storage`].
    pub fn load(&self, id: u64) -> Result<(CheckpointMeta, Blobs), CheckpointError> {
        let meta = self.meta(id)?;
        let mut blobs = Blobs::default();
        for (index, blob) in meta.blobs.iter().enumerate() {
            let index = u32::try_from(index).map_err(|_| CheckpointError::Corrupt {
                id,
                reason: "too many blobs".to_owned(),
            })?;
            let mut payload = Vec::with_capacity(usize::try_from(blob.len).unwrap_or(0));
            for part in self.reader(&meta, index) {
                match part {
                    Ok(part) => payload.extend_from_slice(&part),
                    Err(e) => return Err(self.unless_pruned(id, e)),
                }
            }
            blobs.insert(blob.name.clone(), payload);
        }
        self.mark_verified(id);
        Ok((meta, blobs))
    }

    /// Verifies every blob of checkpoint `id` chunk by chunk without keeping the payloads
    /// (memory stays at one chunk); remembered, so each checkpoint is read at most once.
    ///
    /// # Errors
    /// As [`CheckpointStore::load`].
    pub fn verify(&self, id: u64) -> Result<CheckpointMeta, CheckpointError> {
        let meta = self.meta(id)?;
        if self.is_verified(id) {
            return Ok(meta);
        }
        for index in 0..meta.blobs.len() {
            let index = u32::try_from(index).map_err(|_| CheckpointError::Corrupt {
                id,
                reason: "too many blobs".to_owned(),
            })?;
            for part in self.reader(&meta, index) {
                if let Err(e) = part {
                    return Err(self.unless_pruned(id, e));
                }
            }
        }
        self.mark_verified(id);
        Ok(meta)
    }

    /// Metadata of the newest checkpoint that verifies, without reading the blobs of
    /// checkpoints this process wrote or already verified (the daemon's HTTP answers use
    /// this: no blob is read per request). Damaged or unreadable newer ones are skipped with a
    /// warning.
    ///
    /// # Errors
    /// [`CheckpointError::Storage`] when the metadata cannot be listed.
    pub fn latest_valid_meta(&self) -> Result<Option<CheckpointMeta>, CheckpointError> {
        for (id, meta) in self.scan_meta()? {
            if meta.is_err() {
                continue;
            }
            match guard_sled(|| self.verify(id)) {
                Ok(meta) => return Ok(Some(meta)),
                Err(CheckpointError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(checkpoint = id, error = %e, "checkpoint {id} does not verify; skipping it"),
            }
        }
        Ok(None)
    }

    fn is_verified(&self, id: u64) -> bool {
        self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&id)
    }

    fn mark_verified(&self, id: u64) {
        let mut set = self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(id);
        // Only recent ids matter; keep the set small.
        while set.len() > 64 {
            set.pop_first();
        }
    }

    /// Loads the newest checkpoint that verifies. A newer checkpoint that does not verify is
    /// skipped with a warning naming it (never silently trained over). `Ok(None)` when no
    /// checkpoint verifies (or none exists).
    ///
    /// # Errors
    /// [`CheckpointError::Storage`] when sled fails for another reason than damaged data.
    pub fn load_latest_valid(&self) -> Result<Option<(CheckpointMeta, Blobs)>, CheckpointError> {
        let stored = self.scan_meta()?;
        let newest_stored = stored.first().map(|(id, _)| *id);
        // 0 records "emptied by prune(0)".
        if let Some(recorded) = self.newest.read().filter(|id| *id > 0) {
            if newest_stored.is_none_or(|stored| stored < recorded) {
                tracing::warn!(
                    checkpoint = recorded,
                    "checkpoint {recorded} was written but is missing from the store (database damaged?); \
                     falling back to the newest checkpoint that remains"
                );
            }
        }
        // A checkpoint whose data cannot be read (sled reports an I/O error: a blob file of
        // its pages missing or truncated) is skipped like a corrupt one; only when no
        // checkpoint at all can be read is the I/O error returned (never a silent new lineage
        // over an unreadable store).
        let mut unreadable: Option<CheckpointError> = None;
        for (id, meta) in stored {
            let loaded = meta.and_then(|_| guard_sled(|| self.load(id)));
            match loaded {
                Ok(found) => return Ok(Some(found)),
                Err(e @ CheckpointError::Corrupt { .. }) => tracing::warn!(
                    checkpoint = id,
                    error = %e,
                    "checkpoint {id} failed verification; skipping it and trying the previous one"
                ),
                // Pruned between listing and loading: older ones are being removed anyway.
                Err(CheckpointError::NotFound { .. }) => {}
                Err(e @ CheckpointError::Storage(_)) => {
                    tracing::warn!(
                        checkpoint = id,
                        error = %e,
                        "checkpoint {id} cannot be read (a file of the store is missing or truncated?); skipping it and trying the previous one"
                    );
                    unreadable.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match unreadable {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Reads and verifies one blob of checkpoint `id` (for `checkpoint export`, or the
    /// daemon's HTTP server serving inspection commands while it holds the store).
    ///
    /// # Errors
    /// As [`CheckpointStore::load`], plus [`CheckpointError::NoSuchBlob`].
    pub fn read_blob(&self, id: u64, name: &str) -> Result<Vec<u8>, CheckpointError> {
        guard_sled(|| self.read_blob_unguarded(id, name))
    }

    fn read_blob_unguarded(&self, id: u64, name: &str) -> Result<Vec<u8>, CheckpointError> {
        let chunks = self.blob_chunks(id, name)?;
        let mut payload = Vec::with_capacity(usize::try_from(chunks.blob().len).unwrap_or(0));
        for part in chunks {
            match part {
                Ok(part) => payload.extend_from_slice(&part),
                Err(e) => return Err(self.unless_pruned(id, e)),
            }
        }
        Ok(payload)
    }

    /// A streaming, verifying reader of one blob of checkpoint `id` (see [`BlobChunks`]).
    ///
    /// # Errors
    /// [`CheckpointError::NotFound`], [`CheckpointError::NoSuchBlob`], or a damaged
    /// metadata record; chunk errors come from the iterator.
    pub fn blob_chunks(&self, id: u64, name: &str) -> Result<BlobChunks, CheckpointError> {
        let meta = self.meta(id)?;
        let (index, _) = meta.blob(name).ok_or_else(|| CheckpointError::NoSuchBlob {
            id,
            name: name.to_owned(),
        })?;
        let index = u32::try_from(index).map_err(|_| CheckpointError::Corrupt {
            id,
            reason: "too many blobs".to_owned(),
        })?;
        Ok(self.reader(&meta, index))
    }

    /// The verifying reader of blob `index` of the checkpoint `meta` describes, from its data
    /// file or, for checkpoints of older stores, from the sled data tree.
    fn reader(&self, meta: &CheckpointMeta, index: u32) -> BlobChunks {
        let blob = meta.blobs[index as usize].clone();
        match &meta.data_file {
            Some(file) => {
                let chunks = FileChunks::open(&self.path, meta.id, file, &meta.blobs, index as usize);
                BlobChunks::in_file(meta.id, blob, chunks)
            }
            None => BlobChunks::in_tree(&self.data, meta.id, index, blob),
        }
    }

    /// Keeps the newest `keep` checkpoints and deletes the older ones (metadata first, then
    /// chunks), plus any chunks left by interrupted writes. Returns how many checkpoints were
    /// deleted. `keep = 0` deletes every checkpoint (and forgets the newest id, so that an
    /// empty store is not reported as damaged).
    ///
    /// # Errors
    /// [`CheckpointError::Storage`] when sled fails.
    pub fn prune(&self, keep: usize) -> Result<usize, CheckpointError> {
        let _writing = self.lock_writer();
        let ids: Vec<u64> = self.scan_meta()?.into_iter().map(|(id, _)| id).collect();
        let doomed = ids.get(keep..).unwrap_or_default();
        for id in doomed {
            self.meta.remove(id.to_be_bytes())?;
        }
        if !doomed.is_empty() {
            // The records go first and durably: a crash must never leave a record naming a
            // deleted data file.
            self.db.flush()?;
        }
        let chunks = self.collect_garbage()?;
        if !doomed.is_empty() || chunks > 0 {
            self.db.flush()?;
            if keep == 0 {
                if let Err(e) = self.newest.write(0) {
                    tracing::warn!(error = %e, "cannot reset the newest checkpoint record");
                }
            }
            tracing::debug!(checkpoints = doomed.len(), chunks, "pruned checkpoints");
        }
        Ok(doomed.len())
    }

    /// Bytes the store occupies on disk (the data files, sled's log and its blob files).
    ///
    /// # Errors
    /// [`CheckpointError::Storage`] when the files cannot be inspected.
    pub fn size_on_disk(&self) -> Result<u64, CheckpointError> {
        let mut bytes = self.db.size_on_disk()?;
        for (_, path) in data_file::present(&self.path).map_err(sled::Error::Io)? {
            match std::fs::metadata(&path) {
                Ok(m) => bytes += m.len(),
                // Pruned meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CheckpointError::Storage(sled::Error::Io(e))),
            }
        }
        Ok(bytes)
    }

    /// Blocks until everything written so far is durable.
    ///
    /// # Errors
    /// [`CheckpointError::Storage`] when sled fails.
    pub fn flush(&self) -> Result<(), CheckpointError> {
        self.db.flush()?;
        Ok(())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, SyncedBlobs> {
        // The guarded state lives in sled, not in the mutex: a panic elsewhere poisons
        // nothing we rely on.
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every metadata record, newest first, decoded or with the reason it does not decode.
    fn scan_meta(&self) -> Result<Vec<(u64, MetaOrWhyNot)>, CheckpointError> {
        guard_sled(|| {
            let mut out = Vec::new();
            for entry in self.meta.iter().rev() {
                let (key, raw) = entry?;
                let Ok(key) = <[u8; 8]>::try_from(key.as_ref()) else {
                    tracing::warn!(key = ?key, "ignoring a metadata key that is not a checkpoint id");
                    continue;
                };
                let id = u64::from_be_bytes(key);
                out.push((id, decode_meta(id, &raw)));
            }
            Ok(out)
        })
    }

    /// The stored next-id counter (0 when absent).
    fn next_id_counter(&self) -> Result<u64, CheckpointError> {
        Ok(match self.state.get(NEXT_ID_KEY)? {
            Some(raw) => <[u8; 8]>::try_from(raw.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0),
            None => 0,
        })
    }

    /// Raises the next-id counter to at least `at_least`.
    fn raise_next_id(&self, at_least: u64) -> Result<(), CheckpointError> {
        if self.next_id_counter()? < at_least {
            self.state.insert(NEXT_ID_KEY, &at_least.to_be_bytes())?;
        }
        Ok(())
    }

    /// The next id: above every id ever handed out, stored or not.
    fn allocate_id(&self) -> Result<u64, CheckpointError> {
        let counter = self.next_id_counter()?;
        let after_meta = match self.meta.last()? {
            Some((key, _)) => {
                <[u8; 8]>::try_from(key.as_ref())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0)
                    + 1
            }
            None => 0,
        };
        let after_data = match self.data.last()? {
            Some((key, _)) => ChunkKey::decode(&key).map_or(0, |k| k.id + 1),
            None => 0,
        };
        let after_files = data_file::present(&self.path)
            .map_err(sled::Error::Io)?
            .last()
            .map_or(0, |(id, _)| id + 1);
        let id = counter.max(after_meta).max(after_data).max(after_files).max(1);
        // Made durable by the flush that precedes the metadata write.
        self.state.insert(NEXT_ID_KEY, &(id + 1).to_be_bytes())?;
        Ok(id)
    }

    /// Deletes the data files and chunks whose checkpoint has no metadata record (pruned, or
    /// a write interrupted before its record). Reads only the data directory and the first
    /// key of each checkpoint's range in the data tree, so it is cheap when there is nothing
    /// to delete. Returns the files and chunks removed. Caller holds the writer lock.
    fn collect_garbage(&self) -> Result<usize, CheckpointError> {
        let live: BTreeSet<u64> = self
            .meta
            .iter()
            .keys()
            .filter_map(|k| k.ok().and_then(|k| <[u8; 8]>::try_from(k.as_ref()).ok()))
            .map(u64::from_be_bytes)
            .collect();
        let mut removed = 0;
        let files = data_file::present(&self.path).map_err(sled::Error::Io)?;
        for (id, path) in files {
            if live.contains(&id) {
                continue;
            }
            // Never hand out an id that was already used, even by an invisible checkpoint.
            self.raise_next_id(id.saturating_add(1))?;
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CheckpointError::Storage(sled::Error::Io(e))),
            }
        }
        let mut cursor = ChunkKey::first_of(0);
        loop {
            let Some(first) = self.data.range(cursor..).keys().next() else {
                break;
            };
            let first = first?;
            let Some(id) = ChunkKey::decode(&first).map(|k| k.id) else {
                tracing::warn!(key = ?first, "removing a malformed chunk key");
                self.data.remove(&first)?;
                removed += 1;
                continue;
            };
            let next = id.checked_add(1).map(ChunkKey::first_of);
            if !live.contains(&id) {
                // Never hand out an id that was already used, even by an invisible checkpoint.
                self.raise_next_id(id.saturating_add(1))?;
                let end = next.unwrap_or([0xff; KEY_LEN]);
                let mut batch = sled::Batch::default();
                for key in self.data.range(ChunkKey::first_of(id)..end).keys() {
                    batch.remove(key?);
                    removed += 1;
                }
                self.data.apply_batch(batch)?;
            }
            match next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        Ok(removed)
    }

    /// A corrupt-looking read of a checkpoint that no longer exists is a `NotFound`.
    fn unless_pruned(&self, id: u64, error: CheckpointError) -> CheckpointError {
        match self.meta.contains_key(id.to_be_bytes()) {
            Ok(false) => CheckpointError::NotFound { id },
            _ => error,
        }
    }
}

/// Runs a read of the database, turning a panic inside sled into a storage error. sled 0.34
/// panics ("cannot find pid N in view_for_key") instead of returning an error when a tree page
/// it needs sits in a missing or truncated blob file; for the store that is damaged data to
/// skip, never a crash of the daemon.
fn guard_sled<T>(read: impl FnOnce() -> Result<T, CheckpointError>) -> Result<T, CheckpointError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("panic");
        Err(CheckpointError::Storage(sled::Error::Io(std::io::Error::other(format!(
            "sled failed reading the database ({what}; a file under blobs/ missing or damaged?)"
        )))))
    })
}

/// How long `open` waits for sled's own file lock once ours is held: a store dropped just
/// before in this process releases sled's lock only when sled's I/O threads finish.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the sled database, waiting up to [`SLED_LOCK_WAIT`] for sled's file lock.
fn open_database(path: &Path, options: &StoreOptions) -> Result<sled::Db, CheckpointError> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        // sled 0.34 panics in its recovery when a blob file is missing ("tried to serialize
        // Uninitialized"): report that as a damaged database, not a crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sled::Config::new()
                .path(path)
                .cache_capacity(options.cache_capacity)
                .open()
        }))
        .unwrap_or_else(|_| {
            Err(sled::Error::Io(std::io::Error::other(
                "sled failed while recovering the database (a file under blobs/ missing or damaged?)",
            )))
        });
        match opened {
            Ok(db) => return Ok(db),
            // We hold our lock file, so the holder is a store of this process being torn down,
            // or a foreign process that bypassed the lock file: wait a little, then give up.
            Err(sled::Error::Io(ref e)) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(CheckpointError::Locked {
                        path: path.to_owned(),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            Err(source) => {
                return Err(CheckpointError::Database {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
