//! The metadata record of one checkpoint: what `unimod checkpoint show --json` prints
//! (docs/interface.md section 1) plus what the store needs to find and verify the blobs.
//!
//! On disk the record is `[format version: u8][crc32 of the JSON: u32 LE][JSON]`, so a
//! damaged record is told apart from a record written by a newer, unknown format.

use serde::{Deserialize, Serialize};
use unimod_ingest::offsets::PartitionOffsets;
use unimod_ingest::record::RecordKind;

use super::data_file::DataFile;
use super::error::CheckpointError;

/// Format version of the encoded metadata record.
const META_FORMAT: u8 = 1;

/// Metadata of one checkpoint. The store assigns `id`, `created_at`, `bytes` and `blobs` in
/// [`CheckpointStore::write`](super::CheckpointStore::write); the caller fills the rest.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Checkpoint id, assigned by the store, strictly increasing over the store's lifetime
    /// (also across restarts and pruning).
    pub id: u64,
    /// Training step (optimizer updates) contained in this checkpoint.
    pub step: u64,
    /// When the checkpoint was written, RFC 3339 in UTC.
    pub created_at: String,
    /// Total payload bytes of all blobs.
    pub bytes: u64,
    /// Fresh records (not replays) whose effect is contained in this checkpoint.
    pub records: RecordCounts,
    /// Next offsets to consume, per partition, with the offsets above them that are also
    /// already contained (records finished out of order; skipped on resume, not trained
    /// twice). Stored as `{"topic", "partition", "offset", "done_above"}`.
    pub offsets: Vec<PartitionOffsets>,
    /// Which model the weights belong to.
    pub model: ModelSummary,
    /// The stored blobs in write order, with their lengths and checksums.
    pub blobs: Vec<BlobMeta>,
    /// Anything else the trainer wants restored atomically with the weights (schedule
    /// position, counters, ...). `null` when unused.
    #[serde(default)]
    pub extra: serde_json::Value,
    /// The file holding the blobs' chunks (`data/<id>.ckpt` in the store directory). Absent
    /// for checkpoints written by versions before 2026-12-01, whose chunks are in sled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_file: Option<DataFile>,
}

/// Fresh-record counts per kind, plus the records rejected before training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RecordCounts {
    /// Text-only records trained on.
    pub text: u64,
    /// Image-only records trained on.
    pub image: u64,
    /// Image-caption pairs trained on.
    pub pair: u64,
    /// Records rejected (unusable), whose offsets are nevertheless covered.
    pub rejected: u64,
}

impl RecordCounts {
    /// Counts one more trained record of `kind`.
    pub fn bump(&mut self, kind: RecordKind) {
        match kind {
            RecordKind::Text => self.text += 1,
            RecordKind::Image => self.image += 1,
            RecordKind::Pair => self.pair += 1,
        }
    }
}


/// Which model a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ModelSummary {
    /// `"unimo"` or `"vilbert"`.
    pub arch: String,
    /// `"tiny"`, `"small"`, `"base"` or `"large"`.
    pub size: String,
    /// Number of trainable parameters.
    pub parameters: u64,
}

/// One named blob of a checkpoint ("model", "optimizer", "replay", "tokenizer", ...).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BlobMeta {
    /// Blob name, unique within the checkpoint.
    pub name: String,
    /// Payload length in bytes.
    pub len: u64,
    /// Number of chunks it is stored as.
    pub chunks: u32,
    /// CRC-32 (IEEE) of the whole payload.
    pub crc32: u32,
}

impl CheckpointMeta {
    /// The blob of this name, with its index (the index is part of the chunk keys).
    pub fn blob(&self, name: &str) -> Option<(usize, &BlobMeta)> {
        self.blobs.iter().enumerate().find(|(_, b)| b.name == name)
    }
}

/// Encodes a metadata record for the meta tree.
pub(crate) fn encode_meta(meta: &CheckpointMeta) -> Result<Vec<u8>, CheckpointError> {
    let json = serde_json::to_vec(meta)
        .map_err(|e| CheckpointError::Invalid(format!("metadata does not serialize: {e}")))?;
    let mut out = Vec::with_capacity(json.len() + 5);
    out.push(META_FORMAT);
    out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Decodes and verifies a metadata record stored under checkpoint `id`.
pub(crate) fn decode_meta(id: u64, raw: &[u8]) -> Result<CheckpointMeta, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt { id, reason };
    let (header, json) = raw
        .split_at_checked(5)
        .ok_or_else(|| corrupt(format!("metadata record truncated to {} bytes", raw.len())))?;
    if header[0] != META_FORMAT {
        return Err(corrupt(format!("unknown metadata format {}", header[0])));
    }
    let expected = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    if crc32fast::hash(json) != expected {
        return Err(corrupt("metadata checksum mismatch".to_owned()));
    }
    let meta: CheckpointMeta = serde_json::from_slice(json)
        .map_err(|e| corrupt(format!("metadata does not decode: {e}")))?;
    if meta.id != id {
        return Err(corrupt(format!(
            "metadata names id {} under key {id}",
            meta.id
        )));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use unimod_ingest::record::TopicPartition;

    use super::*;

    fn sample() -> CheckpointMeta {
        CheckpointMeta {
            id: 7,
            step: 1200,
            created_at: "2026-11-27T06:00:00Z".to_owned(),
            bytes: 10,
            records: RecordCounts {
                text: 1,
                image: 2,
                pair: 3,
                rejected: 4,
            },
            offsets: vec![PartitionOffsets {
                tp: TopicPartition::new("unimo.text", 0),
                next_offset: 42,
                finished_above: vec![44],
            }],
            model: ModelSummary {
                arch: "unimo".to_owned(),
                size: "tiny".to_owned(),
                parameters: 5,
            },
            blobs: vec![BlobMeta {
                name: "model".to_owned(),
                len: 10,
                chunks: 1,
                crc32: 9,
            }],
            extra: serde_json::json!({"schedule_step": 1200}),
            data_file: Some(DataFile {
                path: "data/00000000000000000007.ckpt".to_owned(),
                chunk_size: 65_536,
                bytes: 14,
            }),
        }
    }

    #[test]
    fn meta_round_trips_and_has_the_interface_fields() {
        let meta = sample();
        let raw = encode_meta(&meta).expect("encodes");
        assert_eq!(decode_meta(7, &raw).expect("decodes"), meta);

        let json = serde_json::to_value(&meta).expect("to json");
        for key in [
            "id",
            "step",
            "created_at",
            "bytes",
            "records",
            "offsets",
            "model",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["records"]["rejected"], 4);
        assert_eq!(json["offsets"][0]["partition"], 0);
        assert_eq!(json["offsets"][0]["offset"], 42);
        assert_eq!(json["offsets"][0]["topic"], "unimo.text");
        assert_eq!(json["offsets"][0]["done_above"], serde_json::json!([44]));
        assert_eq!(json["model"]["arch"], "unimo");
    }

    #[test]
    fn damaged_or_misplaced_meta_is_corrupt() {
        let raw = encode_meta(&sample()).expect("encodes");
        for i in [0, 2, raw.len() / 2, raw.len() - 1] {
            let mut bad = raw.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(
                    decode_meta(7, &bad),
                    Err(CheckpointError::Corrupt { id: 7, .. })
                ),
                "byte {i}"
            );
        }
        assert!(matches!(
            decode_meta(7, &raw[..3]),
            Err(CheckpointError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_meta(8, &raw),
            Err(CheckpointError::Corrupt { id: 8, .. })
        ));
    }

    /// A metadata record exactly as written before the offsets had one type in `ingest`
    /// (captured from that code): it still loads, and encodes back byte for byte.
    #[test]
    fn a_record_written_by_the_earlier_types_loads_and_reencodes_identically() {
        let raw: &[u8] = include_bytes!("../../tests/fixtures/checkpoint-meta-v1.bin");
        let meta = decode_meta(12, raw).expect("decodes");
        assert_eq!(meta.step, 340);
        assert_eq!(meta.records, RecordCounts { text: 5000, image: 2100, pair: 3300, rejected: 17 });
        assert_eq!(
            meta.offsets,
            vec![
                PartitionOffsets { tp: TopicPartition::new("unimo.image", 0), next_offset: 2105, finished_above: vec![] },
                PartitionOffsets { tp: TopicPartition::new("unimo.pair", 1), next_offset: 1650, finished_above: vec![1652, 1700] },
                PartitionOffsets { tp: TopicPartition::new("unimo.text", 0), next_offset: 5003, finished_above: vec![5010] },
            ]
        );
        assert_eq!(meta.model.arch, "unimo");
        assert_eq!(meta.blobs.len(), 3);
        assert_eq!(encode_meta(&meta).expect("encodes"), raw);
        // `done_above` was optional: a record without it loads with nothing finished above.
        let json = br#"{"id":1,"step":0,"created_at":"","bytes":0,"records":{"text":0,"image":0,"pair":0,"rejected":0},"offsets":[{"topic":"t","partition":2,"offset":9}],"model":{"arch":"unimo","size":"tiny","parameters":0},"blobs":[]}"#;
        let meta: CheckpointMeta = serde_json::from_slice(json).expect("decodes");
        assert_eq!(meta.offsets, vec![PartitionOffsets::new("t", 2, 9)]);
    }
}
