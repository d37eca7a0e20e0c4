//! Checkpoint data files: the chunks of one checkpoint's blobs in a plain file of its own,
//! `data/<id>.ckpt` under the store directory (sled keeps the metadata records).
//!
//! Layout: the blobs in metadata order, each cut into `chunk_size` chunks (the last one
//! shorter), each chunk stored as `[crc32: u32 LE][payload]` where the CRC covers the chunk's
//! [`ChunkKey`] and its payload (as in the sled data tree of older stores): a chunk that is
//! damaged, or read at the wrong place, fails verification. No header: where a chunk lies is
//! computed from the metadata ([`DataFile`], [`BlobMeta`]), which is itself checksummed.
//!
//! Why not sled: sled 0.34 cannot open a database whose blob file is missing (a panic in its
//! recovery), keeps up to 2-3x the live bytes on disk, and a database per checkpoint held
//! more memory the longer the daemon ran (not diagnosed; issue 9's notes). A file
//! per checkpoint is written once, fsynced, read sequentially, deleted whole by pruning, and a
//! missing or truncated one damages only its own checkpoint.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chunk::{checksum, ChunkKey};
use super::error::CheckpointError;
use super::meta::BlobMeta;

/// Directory of the data files, inside the store directory.
pub(crate) const DATA_DIR: &str = "data";
/// File name extension of a data file.
const EXTENSION: &str = "ckpt";
/// Bytes of the checksum in front of each chunk.
const CRC_LEN: u64 = 4;

/// Where a checkpoint's chunks are stored when they are in a data file (every checkpoint
/// written since 2026-12-01; older ones keep their chunks in sled and have no `data_file`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataFile {
    /// Path of the file relative to the store directory (`data/<id>.ckpt`).
    pub path: String,
    /// Payload bytes per chunk.
    pub chunk_size: u64,
    /// Length of the file in bytes (payloads plus a 4-byte checksum per chunk).
    pub bytes: u64,
}

/// The data file of checkpoint `id`, relative to the store directory.
pub(crate) fn relative_path(id: u64) -> String {
    format!("{DATA_DIR}/{id:020}.{EXTENSION}")
}

/// The checkpoint id a file in the data directory belongs to (`None`: not a data file).
pub(crate) fn id_of(file_name: &std::ffi::OsStr) -> Option<u64> {
    let name = file_name.to_str()?;
    let stem = name.strip_suffix(EXTENSION)?.strip_suffix('.')?;
    stem.parse().ok()
}

/// Every data file present in the store directory `store`, as (id, path), in id order.
pub(crate) fn present(store: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(store.join(DATA_DIR)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(id) = id_of(&entry.file_name()) {
            out.push((id, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Adds the path to an I/O error, so that an operator sees which file failed.
fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Writes the data file of checkpoint `id` and makes it durable (the file and the directory
/// entry fsynced). On failure the partial file is removed (best effort; a leftover is garbage
/// collected like any file without metadata).
pub(crate) fn write(
    store: &Path,
    id: u64,
    blobs: &[(String, Vec<u8>)],
    chunk_size: usize,
) -> io::Result<DataFile> {
    let relative = relative_path(id);
    let path = store.join(&relative);
    let written = write_at(&path, id, blobs, chunk_size);
    if written.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let bytes = written.map_err(|e| with_path(&path, e))?;
    Ok(DataFile {
        path: relative,
        chunk_size: chunk_size as u64,
        bytes,
    })
}

fn write_at(
    path: &Path,
    id: u64,
    blobs: &[(String, Vec<u8>)],
    chunk_size: usize,
) -> io::Result<u64> {
    let dir = path.parent().expect("a data file lives in the data directory");
    std::fs::create_dir_all(dir)?;
    let file = File::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut bytes = 0_u64;
    for (blob, (_, payload)) in blobs.iter().enumerate() {
        let blob = u32::try_from(blob).map_err(|_| io::Error::other("too many blobs"))?;
        for (chunk, part) in payload.chunks(chunk_size).enumerate() {
            let chunk = u32::try_from(chunk).map_err(|_| io::Error::other("too many chunks"))?;
            let key = ChunkKey { id, blob, chunk }.encode();
            out.write_all(&checksum(&key, part).to_le_bytes())?;
            out.write_all(part)?;
            bytes += CRC_LEN + part.len() as u64;
        }
    }
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(bytes)
}

/// Byte offset of blob `index`'s first chunk in a data file with `chunk_size`.
fn blob_offset(blobs: &[BlobMeta], index: usize) -> u64 {
    blobs[..index]
        .iter()
        .map(|b| b.len + CRC_LEN * u64::from(b.chunks))
        .sum()
}

/// Reads one blob's chunks from a data file, verifying each (see [`super::BlobChunks`]).
pub(crate) struct FileChunks {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    /// Why the file could not be opened or positioned (reported at the first read).
    failed: Option<CheckpointError>,
    id: u64,
    blob: u32,
    chunk_size: u64,
    remaining: u64,
}

impl FileChunks {
    /// Opens the blob `index` (described by `blobs[index]`) of checkpoint `id`. The file is
    /// opened right away, so a reader created before a prune still reads its checkpoint.
    pub(crate) fn open(store: &Path, id: u64, file: &DataFile, blobs: &[BlobMeta], index: usize) -> Self {
        let path = store.join(&file.path);
        let blob = &blobs[index];
        let mut chunks = Self {
            path,
            reader: None,
            failed: None,
            id,
            blob: u32::try_from(index).unwrap_or(u32::MAX),
            chunk_size: file.chunk_size,
            remaining: blob.len,
        };
        if file.chunk_size == 0 || blob.len.div_ceil(file.chunk_size) != u64::from(blob.chunks) {
            chunks.failed = Some(chunks.corrupt(format!(
                "blob {:?}: {} bytes in {} chunks do not fit a chunk size of {}",
                blob.name, blob.len, blob.chunks, file.chunk_size
            )));
            return chunks;
        }
        let opened = File::open(&chunks.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(blob_offset(blobs, index)))?;
            Ok(f)
        });
        match opened {
            Ok(f) => chunks.reader = Some(BufReader::with_capacity(256 * 1024, f)),
            Err(e) => chunks.failed = Some(chunks.io_error(e)),
        }
        chunks
    }

    fn corrupt(&self, reason: String) -> CheckpointError {
        CheckpointError::Corrupt { id: self.id, reason }
    }

    /// A missing or short file is damage to this checkpoint (skip it); anything else is a
    /// storage error.
    fn io_error(&self, e: io::Error) -> CheckpointError {
        let path = self.path.display();
        match e.kind() {
            io::ErrorKind::NotFound => self.corrupt(format!("data file {path} is missing")),
            io::ErrorKind::UnexpectedEof => self.corrupt(format!("data file {path} is truncated")),
            _ => CheckpointError::Storage(sled::Error::Io(with_path(&self.path, e))),
        }
    }

    /// The next chunk's payload with its index (`None` after the last), verified against
    /// its checksum. Errors end the blob.
    pub(crate) fn next_chunk(&mut self, chunk: u32) -> Option<Result<Vec<u8>, CheckpointError>> {
        if let Some(e) = self.failed.take() {
            self.reader = None;
            return Some(Err(e));
        }
        let reader = self.reader.as_mut()?;
        if self.remaining == 0 {
            self.reader = None;
            return None;
        }
        let len = self.remaining.min(self.chunk_size);
        let mut crc = [0_u8; CRC_LEN as usize];
        let mut payload = vec![0_u8; usize::try_from(len).expect("a chunk fits in memory")];
        let read = reader.read_exact(&mut crc).and_then(|()| reader.read_exact(&mut payload));
        if let Err(e) = read {
            self.reader = None;
            return Some(Err(self.io_error(e)));
        }
        let key = ChunkKey { id: self.id, blob: self.blob, chunk }.encode();
        if checksum(&key, &payload) != u32::from_le_bytes(crc) {
            self.reader = None;
            return Some(Err(self.corrupt(format!("chunk {chunk} of blob {}: checksum mismatch", self.blob))));
        }
        self.remaining -= len;
        Some(Ok(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_foreign_files_are_ignored() {
        let rel = relative_path(42);
        let name = Path::new(&rel).file_name().expect("name");
        assert_eq!(id_of(name), Some(42));
        for other in ["42.ckpt.tmp", "x.ckpt", "42", "42ckpt", ".ckpt"] {
            assert_eq!(id_of(std::ffi::OsStr::new(other)), None, "{other}");
        }
    }

    #[test]
    fn offsets_follow_the_blobs_in_order() {
        let blobs = [
            BlobMeta { name: "a".into(), len: 10, chunks: 3, crc32: 0 },
            BlobMeta { name: "b".into(), len: 0, chunks: 0, crc32: 0 },
            BlobMeta { name: "c".into(), len: 5, chunks: 2, crc32: 0 },
        ];
        assert_eq!(blob_offset(&blobs, 0), 0);
        assert_eq!(blob_offset(&blobs, 1), 22);
        assert_eq!(blob_offset(&blobs, 2), 22);
    }
}
