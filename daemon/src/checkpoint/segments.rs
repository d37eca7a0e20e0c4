//! One sled database per checkpoint for its chunks (`<store>/data/<id>/`).
//!
//! sled 0.34 cannot open a database one of whose blob files (`blobs/<n>`) is missing: its
//! recovery panics. With every checkpoint's chunks in the store's one database, a single lost
//! file made every checkpoint unreachable and the daemon could not start (issue 9, item 7).
//! Here each checkpoint's chunks live in a database of their own, written once and never
//! changed: a missing or truncated file damages that checkpoint only, which the loads skip
//! with a warning for the previous one. Deleting a checkpoint deletes its directory, so
//! pruning returns the space at once instead of waiting for sled's segment cleaner.
//!
//! The store's main database keeps the metadata records (the single write that makes a
//! checkpoint visible), the id counter and, read-only, the chunk tree of stores written
//! before this layout. A directory whose checkpoint has no metadata record is the remains of
//! an interrupted write (or prune) and is deleted by the store's garbage collection.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::blob_sync::SyncedBlobs;
use super::error::CheckpointError;

/// Directory of the per-checkpoint databases inside the store directory.
const DIR: &str = "data";

/// sled's page cache of one checkpoint's database: checkpoints are written once and read
/// rarely (at start, by `export`/`eval` and the HTTP reader), so a small cache each.
const CACHE_CAPACITY: u64 = 8 * 1024 * 1024;

/// The per-checkpoint databases of one store, opened on first use and kept open until their
/// checkpoint is deleted (sled allows one handle per database in a process).
pub(crate) struct Segments {
    dir: PathBuf,
    open: Mutex<BTreeMap<u64, sled::Db>>,
}

impl Segments {
    pub(crate) fn new(store: &Path) -> Self {
        Self {
            dir: store.join(DIR),
            open: Mutex::new(BTreeMap::new()),
        }
    }

    /// Directory of checkpoint `id`'s database (zero-padded, so names sort by id).
    pub(crate) fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}"))
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, sled::Db>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ids that have a database directory (complete or not). Entries that are not a
    /// checkpoint's directory are ignored.
    pub(crate) fn ids(&self) -> Result<BTreeSet<u64>, CheckpointError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(sled::Error::Io(e).into()),
        };
        let mut ids = BTreeSet::new();
        for entry in entries {
            let entry = entry.map_err(sled::Error::Io)?;
            if let Some(id) = entry.file_name().to_str().and_then(|name| name.parse::<u64>().ok()) {
                ids.insert(id);
            }
        }
        Ok(ids)
    }

    /// Creates the database of a new checkpoint `id`, replacing any leftover directory of the
    /// same id (an interrupted write whose id was never recorded).
    pub(crate) fn create(&self, id: u64) -> Result<sled::Db, CheckpointError> {
        let path = self.path(id);
        self.remove(id)?;
        std::fs::create_dir_all(&path).map_err(sled::Error::Io)?;
        super::store::open_database(&path, CACHE_CAPACITY, false).map_err(|e| opening_failed(&path, e))
    }

    /// Makes a checkpoint's database durable: its blob files (sled never syncs them), its log,
    /// and the directory entries naming them. Then keeps the handle for later reads.
    pub(crate) fn seal(&self, id: u64, db: sled::Db) -> Result<(), CheckpointError> {
        let path = self.path(id);
        SyncedBlobs::default().sync_new(&path)?;
        db.flush()?;
        for dir in [path.as_path(), self.dir.as_path()] {
            File::open(dir).and_then(|d| d.sync_all()).map_err(sled::Error::Io)?;
        }
        self.handles().insert(id, db);
        Ok(())
    }

    /// The chunk tree of checkpoint `id`, opening its database on first use; `None` when the
    /// checkpoint has no directory (a store written before this layout, or deleted).
    ///
    /// A database that sled cannot open (a file of it missing or damaged) is a
    /// [`CheckpointError::Storage`] error naming the directory: that checkpoint is unreadable,
    /// the others are not.
    pub(crate) fn tree(&self, id: u64) -> Result<Option<sled::Tree>, CheckpointError> {
        let mut open = self.handles();
        if let Some(db) = open.get(&id) {
            return Ok(Some((**db).clone()));
        }
        let path = self.path(id);
        if !path.join("db").is_file() {
            // Never let sled create an empty database where one was expected.
            return if path.exists() {
                Err(opening_failed(&path, CheckpointError::Invalid("its file `db` is missing".to_owned())))
            } else {
                Ok(None)
            };
        }
        let db = super::store::open_database(&path, CACHE_CAPACITY, false).map_err(|e| opening_failed(&path, e))?;
        let tree = (*db).clone();
        open.insert(id, db);
        Ok(Some(tree))
    }

    /// Deletes checkpoint `id`'s database (closing our handle first). Readers that still hold
    /// its tree keep reading what they can; a missing directory is not an error.
    pub(crate) fn remove(&self, id: u64) -> Result<(), CheckpointError> {
        let mut open = self.handles();
        drop(open.remove(&id));
        match std::fs::remove_dir_all(self.path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(sled::Error::Io(e).into()),
        }
    }

    /// Bytes of every file under the data directory.
    pub(crate) fn size_on_disk(&self) -> Result<u64, CheckpointError> {
        let mut total = 0;
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                // Deleted by a prune meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(sled::Error::Io(e).into()),
            };
            for entry in entries.flatten() {
                match entry.metadata() {
                    Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                    Ok(meta) => total += meta.len(),
                    Err(_) => {}
                }
            }
        }
        Ok(total)
    }
}

/// A checkpoint database that cannot be opened, as a storage error naming its directory.
fn opening_failed(path: &Path, error: CheckpointError) -> CheckpointError {
    let detail = match error {
        CheckpointError::Database { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    CheckpointError::Storage(sled::Error::Io(io::Error::other(format!(
        "cannot open the checkpoint database {}: {detail}",
        path.display()
    ))))
}
