//! Making sled's blob files durable.
//!
//! sled 0.34 stores pages larger than a quarter segment (here: leaf nodes holding several
//! 64 KiB chunks) as separate files under `blobs/`, and never fsyncs them: its `flush` syncs
//! only the main log. After a power failure (not a process kill: the page cache survives
//! that) the log could name blob files whose contents never reached the disk. So the writer
//! fsyncs every blob file it has not synced yet before each flush, then the directory.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::error::CheckpointError;

/// Threads that fsync blob files concurrently: the filesystem journal then commits many of
/// them together instead of one after another.
const SYNC_THREADS: usize = 8;

/// The blob files already synced (those still present; sled deletes superseded ones).
#[derive(Debug, Default)]
pub(crate) struct SyncedBlobs {
    synced: HashSet<PathBuf>,
}

impl SyncedBlobs {
    /// Fsyncs the blob files of the store in `store` that were not synced before, and the
    /// blob directory when there were any.
    pub(crate) fn sync_new(&mut self, store: &Path) -> Result<(), CheckpointError> {
        let dir = store.join("blobs");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(sled::Error::Io(e).into()),
        };
        let present: HashSet<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        let fresh: Vec<&PathBuf> = present.difference(&self.synced).collect();
        if !fresh.is_empty() {
            sync_files(&fresh).map_err(sled::Error::Io)?;
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(sled::Error::Io)?;
        }
        self.synced = present;
        Ok(())
    }
}

/// Fsyncs `files` on up to [`SYNC_THREADS`] threads; files deleted meanwhile are skipped.
fn sync_files(files: &[&PathBuf]) -> io::Result<()> {
    let per_thread = files.len().div_ceil(SYNC_THREADS).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(per_thread)
            .map(|files| {
                scope.spawn(move || {
                    for path in files {
                        match File::open(path).and_then(|f| f.sync_all()) {
                            // sled removes the blob files of rewritten pages in the background.
                            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                            _ => {}
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(io::Error::other("blob sync thread panicked")))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_each_file_once_and_forgets_deleted_ones() {
        let store = tempfile::tempdir().expect("tempdir");
        let mut synced = SyncedBlobs::default();
        synced
            .sync_new(store.path())
            .expect("no blob directory yet is fine");
        let blobs = store.path().join("blobs");
        std::fs::create_dir(&blobs).expect("mkdir");
        for name in ["10", "11", "12"] {
            std::fs::write(blobs.join(name), name).expect("write");
        }
        synced.sync_new(store.path()).expect("sync");
        assert_eq!(synced.synced.len(), 3);
        std::fs::remove_file(blobs.join("10")).expect("rm");
        std::fs::write(blobs.join("9"), b"late, lower name").expect("write");
        synced.sync_new(store.path()).expect("sync");
        let names: HashSet<_> = synced
            .synced
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .collect();
        assert_eq!(names, HashSet::from(["9", "11", "12"]));
    }
}
