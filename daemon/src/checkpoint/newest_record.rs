//! A small file beside the database that records the id of the newest checkpoint written.
//!
//! sled 0.34 recovers from a damaged log by dropping everything after the damage, silently:
//! the newest checkpoint would vanish instead of failing verification, and training would
//! resume from an older one without a word. This record lives outside sled, so the store can
//! tell "the newest checkpoint was lost" apart from "there is no newer checkpoint" and warn.
//!
//! It is written after the checkpoint is durable, by write-to-temporary, fsync, rename, so
//! it never names a checkpoint that was not completed; it may lag by one after a crash.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the record inside the store directory.
const FILE: &str = "newest-checkpoint.json";

/// The record file of one store.
#[derive(Debug)]
pub(crate) struct NewestRecord {
    path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    id: u64,
}

impl NewestRecord {
    pub(crate) fn new(store: &Path) -> Self {
        Self {
            path: store.join(FILE),
        }
    }

    /// The recorded id; `None` when there is no record (new store, or nothing written yet).
    pub(crate) fn read(&self) -> Option<u64> {
        let raw = match std::fs::read(&self.path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the newest-checkpoint record");
                return None;
            }
        };
        match serde_json::from_slice::<Record>(&raw) {
            Ok(record) => Some(record.id),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "ignoring a damaged newest-checkpoint record");
                None
            }
        }
    }

    /// Records `id` as the newest checkpoint, durably and atomically.
    pub(crate) fn write(&self, id: u64) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(&Record { id }).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_tolerates_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = NewestRecord::new(dir.path());
        assert_eq!(record.read(), None);
        record.write(41).expect("write");
        record.write(42).expect("write");
        assert_eq!(record.read(), Some(42));
        std::fs::write(dir.path().join(FILE), b"{\"id\": 4").expect("damage");
        assert_eq!(record.read(), None);
    }
}
