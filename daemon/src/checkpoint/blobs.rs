//! Reading blobs back: [`Blobs`], the verified payloads of one checkpoint by name, and
//! [`BlobChunks`], a streaming reader that verifies one blob chunk by chunk (for serving a
//! large blob over HTTP without holding it in memory).

use std::collections::BTreeMap;

use super::chunk::{unframe, ChunkKey};
use super::data_file::FileChunks;
use super::error::CheckpointError;
use super::meta::BlobMeta;

/// The blobs of one loaded checkpoint, by name. Every payload has been verified (each chunk's
/// CRC, the length and the whole-blob CRC).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blobs {
    map: BTreeMap<String, Vec<u8>>,
}

impl Blobs {
    pub(crate) fn insert(&mut self, name: String, payload: Vec<u8>) {
        self.map.insert(name, payload);
    }

    /// The payload of the blob `name`, if the checkpoint has one.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.map.get(name).map(Vec::as_slice)
    }

    /// Moves the payload of blob `name` out (to avoid copying large weights).
    pub fn take(&mut self, name: &str) -> Option<Vec<u8>> {
        self.map.remove(name)
    }

    /// Names of the blobs present, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there are no blobs.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All payloads by name.
    pub fn into_map(self) -> BTreeMap<String, Vec<u8>> {
        self.map
    }
}

/// Iterator over the verified chunk payloads of one blob, in order. Yields an error (and
/// then stops) at the first missing or damaged chunk, or at the end if the whole blob's
/// length or CRC does not match its metadata. Owns its file (or, for checkpoints of older
/// stores, its sled iterator), so it is `Send` and can be moved into a blocking task that
/// streams an HTTP response.
pub struct BlobChunks {
    id: u64,
    blob: BlobMeta,
    source: Source,
    next_chunk: u32,
    seen: u64,
    hasher: crc32fast::Hasher,
    finished: bool,
}

/// Where the chunks come from.
enum Source {
    /// The checkpoint's data file (every checkpoint written since 2026-12-01).
    File(FileChunks),
    /// The sled data tree (checkpoints of older stores).
    Tree(sled::Iter),
}

impl BlobChunks {
    /// A reader of a blob stored in the sled data tree (older stores).
    pub(crate) fn in_tree(data: &sled::Tree, id: u64, index: u32, blob: BlobMeta) -> Self {
        let start = ChunkKey::first_of_blob(id, index);
        let end = ChunkKey {
            id,
            blob: index,
            chunk: blob.chunks,
        }
        .encode();
        Self::with_source(id, blob, Source::Tree(data.range(start..end)))
    }

    /// A reader of a blob stored in a data file.
    pub(crate) fn in_file(id: u64, blob: BlobMeta, file: FileChunks) -> Self {
        Self::with_source(id, blob, Source::File(file))
    }

    fn with_source(id: u64, blob: BlobMeta, source: Source) -> Self {
        Self {
            id,
            blob,
            source,
            next_chunk: 0,
            seen: 0,
            hasher: crc32fast::Hasher::new(),
            finished: false,
        }
    }

    /// Metadata of the blob being read.
    pub fn blob(&self) -> &BlobMeta {
        &self.blob
    }

    fn corrupt(&mut self, reason: String) -> Option<Result<Vec<u8>, CheckpointError>> {
        self.finished = true;
        Some(Err(CheckpointError::Corrupt {
            id: self.id,
            reason,
        }))
    }

    /// The next chunk's verified payload from the sled tree.
    fn next_in_tree(&mut self) -> Option<Result<Vec<u8>, CheckpointError>> {
        let Source::Tree(range) = &mut self.source else {
            unreachable!("called for a tree source only")
        };
        match range.next()? {
            Ok((key, value)) => {
                let expected = self.next_chunk;
                let found = ChunkKey::decode(&key).map(|k| k.chunk);
                if found != Some(expected) {
                    let name = self.blob.name.clone();
                    return self.corrupt(format!("blob {name:?}: chunk {expected} is missing"));
                }
                match unframe(&key, &value) {
                    Ok(payload) => Some(Ok(payload.to_vec())),
                    Err(why) => {
                        let name = self.blob.name.clone();
                        self.corrupt(format!("blob {name:?}, chunk {expected}: {why}"))
                    }
                }
            }
            // sled verifies its own on-disk checksums: damage below us surfaces here.
            Err(sled::Error::Corruption { .. }) => {
                let (name, chunk) = (self.blob.name.clone(), self.next_chunk);
                self.corrupt(format!("blob {name:?}, chunk {chunk}: damaged on disk"))
            }
            Err(e) => {
                self.finished = true;
                Some(Err(CheckpointError::Storage(e)))
            }
        }
    }
}

impl Iterator for BlobChunks {
    type Item = Result<Vec<u8>, CheckpointError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let next = match &mut self.source {
            Source::File(file) => file.next_chunk(self.next_chunk),
            Source::Tree(_) => self.next_in_tree(),
        };
        match next {
            Some(Ok(payload)) => {
                self.next_chunk += 1;
                self.seen += payload.len() as u64;
                self.hasher.update(&payload);
                Some(Ok(payload))
            }
            Some(Err(e)) => {
                self.finished = true;
                Some(Err(e))
            }
            None => {
                let name = self.blob.name.clone();
                if self.next_chunk != self.blob.chunks {
                    let missing = self.next_chunk;
                    return self.corrupt(format!("blob {name:?}: chunk {missing} is missing"));
                }
                let crc = std::mem::take(&mut self.hasher).finalize();
                if self.seen != self.blob.len || crc != self.blob.crc32 {
                    return self.corrupt(format!(
                        "blob {name:?}: {} bytes with crc {crc:08x}, metadata says {} bytes with crc {:08x}",
                        self.seen, self.blob.len, self.blob.crc32
                    ));
                }
                self.finished = true;
                None
            }
        }
    }
}
