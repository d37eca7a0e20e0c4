//! Chunk keys and chunk framing: how a blob is laid out in the data tree.
//!
//! Key: `[checkpoint id: u64 BE][blob index: u32 BE][chunk index: u32 BE]`, so one
//! checkpoint's chunks are one contiguous key range and a blob's chunks come back in order
//! from a range scan. Value: `[crc32: u32 LE][payload]`, where the CRC covers the key and the
//! payload: a chunk that is damaged, or stored under the wrong key, fails verification.

/// Length of a chunk key.
pub(crate) const KEY_LEN: usize = 16;
/// Length of the checksum in front of each chunk's payload.
const CRC_LEN: usize = 4;

/// Where one chunk lives: checkpoint, blob (index into `CheckpointMeta::blobs`) and chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ChunkKey {
    /// Checkpoint id.
    pub id: u64,
    /// Index of the blob within the checkpoint.
    pub blob: u32,
    /// Index of the chunk within the blob.
    pub chunk: u32,
}

impl ChunkKey {
    /// The key bytes (big-endian, so byte order is numeric order).
    pub(crate) fn encode(self) -> [u8; KEY_LEN] {
        let mut key = [0_u8; KEY_LEN];
        key[..8].copy_from_slice(&self.id.to_be_bytes());
        key[8..12].copy_from_slice(&self.blob.to_be_bytes());
        key[12..].copy_from_slice(&self.chunk.to_be_bytes());
        key
    }

    /// Parses key bytes; `None` when the length is wrong.
    pub(crate) fn decode(raw: &[u8]) -> Option<Self> {
        let raw: &[u8; KEY_LEN] = raw.try_into().ok()?;
        let (id, rest) = raw.split_at(8);
        let (blob, chunk) = rest.split_at(4);
        Some(Self {
            id: u64::from_be_bytes(id.try_into().ok()?),
            blob: u32::from_be_bytes(blob.try_into().ok()?),
            chunk: u32::from_be_bytes(chunk.try_into().ok()?),
        })
    }

    /// First key of checkpoint `id` (inclusive lower bound of its range).
    pub(crate) fn first_of(id: u64) -> [u8; KEY_LEN] {
        Self {
            id,
            blob: 0,
            chunk: 0,
        }
        .encode()
    }

    /// First key of blob `blob` of checkpoint `id`.
    pub(crate) fn first_of_blob(id: u64, blob: u32) -> [u8; KEY_LEN] {
        Self { id, blob, chunk: 0 }.encode()
    }
}

/// The stored value of a chunk in the data tree: checksum of key and payload, then the
/// payload. New checkpoints write data files (`data_file`); tests build the older layout.
#[cfg(test)]
pub(crate) fn frame(key: &[u8; KEY_LEN], payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + payload.len());
    value.extend_from_slice(&checksum(key, payload).to_le_bytes());
    value.extend_from_slice(payload);
    value
}

/// Verifies a stored chunk value against its key; returns the payload, or why it failed.
pub(crate) fn unframe<'v>(key: &[u8], value: &'v [u8]) -> Result<&'v [u8], String> {
    let (crc, payload) = value
        .split_at_checked(CRC_LEN)
        .ok_or_else(|| format!("chunk value truncated to {} bytes", value.len()))?;
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if checksum(key, payload) == expected {
        Ok(payload)
    } else {
        Err("chunk checksum mismatch".to_owned())
    }
}

/// CRC-32 of a chunk's key and payload: what both layouts (sled values and data files) store
/// before the payload, so a chunk read under the wrong key fails its check.
pub(crate) fn checksum(key: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_numerically() {
        let a = ChunkKey {
            id: 1,
            blob: 2,
            chunk: 255,
        };
        let b = ChunkKey {
            id: 1,
            blob: 2,
            chunk: 256,
        };
        let c = ChunkKey {
            id: 256,
            blob: 0,
            chunk: 0,
        };
        assert_eq!(ChunkKey::decode(&a.encode()), Some(a));
        assert!(a.encode() < b.encode() && b.encode() < c.encode());
        assert_eq!(ChunkKey::decode(&[0; 15]), None);
    }

    #[test]
    fn frame_verifies_payload_and_key() {
        let key = ChunkKey {
            id: 3,
            blob: 0,
            chunk: 1,
        }
        .encode();
        let other = ChunkKey {
            id: 3,
            blob: 0,
            chunk: 2,
        }
        .encode();
        let value = frame(&key, b"hello chunk");
        assert_eq!(unframe(&key, &value), Ok(&b"hello chunk"[..]));
        assert!(
            unframe(&other, &value).is_err(),
            "chunk under the wrong key must fail"
        );
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 1;
            assert!(unframe(&key, &bad).is_err(), "flip at {i} undetected");
        }
        assert!(unframe(&key, &value[..3]).is_err());
    }
}
