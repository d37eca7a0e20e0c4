//! Tests of the checkpoint store: round trip, ids, pruning, corruption (in sled values, in
//! metadata and in the files on disk), interrupted writes (simulated, and real SIGKILLs of a
//! child writer), locking, sharing across threads, and the bound on the store's size on disk.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;
use unimod_ingest::offsets::PartitionOffsets;

use crate::checkpoint::chunk::frame;
use crate::checkpoint::meta::encode_meta;
use crate::checkpoint::{ModelSummary, RecordCounts};

/// Deterministic incompressible bytes.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0_u8; len];
    for word in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
    out
}

fn meta(step: u64) -> CheckpointMeta {
    CheckpointMeta {
        step,
        records: RecordCounts {
            text: step,
            image: 2 * step,
            pair: 3 * step,
            rejected: 1,
        },
        offsets: vec![
            PartitionOffsets::new("unimo.text", 0, step as i64),
            PartitionOffsets { finished_above: vec![9, 12], ..PartitionOffsets::new("unimo.pair", 3, 7) },
        ],
        model: ModelSummary {
            arch: "unimo".to_owned(),
            size: "tiny".to_owned(),
            parameters: 1234,
        },
        extra: serde_json::json!({ "schedule_step": step }),
        ..CheckpointMeta::default()
    }
}

/// Small chunks so that small payloads span many chunks.
fn small_chunks() -> StoreOptions {
    StoreOptions {
        chunk_size: 1000,
        ..StoreOptions::default()
    }
}

fn blobs(seed: u64) -> Vec<(String, Vec<u8>)> {
    vec![
        ("model".to_owned(), payload(10_500, seed)),
        ("optimizer".to_owned(), payload(3000, seed + 1)), // exactly 3 chunks
        ("tokenizer".to_owned(), b"{\"vocab\": {}}".to_vec()),
        ("empty".to_owned(), Vec::new()),
    ]
}

/// Runs `f` with a subscriber that records log lines, and returns them.
fn capture_logs<R>(f: impl FnOnce() -> R) -> (R, String) {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let logs = String::from_utf8_lossy(&sink.0.lock().expect("sink lock")).into_owned();
    (out, logs)
}

/// Checkpoint ids that still have data: a data file, or chunks in the sled data tree.
fn ids_with_chunks(store: &CheckpointStore) -> BTreeSet<u64> {
    let mut ids: BTreeSet<u64> = store
        .data
        .iter()
        .keys()
        .map(|k| ChunkKey::decode(&k.expect("key")).expect("chunk key").id)
        .collect();
    ids.extend(data_file::present(store.path()).expect("data dir").into_iter().map(|(id, _)| id));
    ids
}

/// The data file of checkpoint `written`.
fn data_file_of(store: &CheckpointStore, written: &CheckpointMeta) -> std::path::PathBuf {
    let file = written.data_file.as_ref().expect("a new checkpoint has a data file");
    store.path().join(&file.path)
}

/// Where payload byte `at` of chunk `chunk` of blob `blob` lies in a data file.
fn file_offset(written: &CheckpointMeta, blob: usize, chunk: u64, at: u64) -> u64 {
    let size = written.data_file.as_ref().expect("data file").chunk_size;
    let before: u64 = written.blobs[..blob].iter().map(|b| b.len + 4 * u64::from(b.chunks)).sum();
    before + chunk * (size + 4) + 4 + at
}

/// Writes a checkpoint the way stores before 2026-12-01 did: its chunks in the sled data
/// tree, no data file, then the metadata record.
fn write_legacy(store: &CheckpointStore, mut meta: CheckpointMeta, blobs: &[(String, Vec<u8>)]) -> CheckpointMeta {
    let id = store.allocate_id().expect("id");
    let size = store.options.chunk_size;
    meta.id = id;
    meta.created_at = "2026-11-30T00:00:00Z".to_owned();
    for (index, (name, payload)) in blobs.iter().enumerate() {
        for (chunk, part) in payload.chunks(size).enumerate() {
            let key = ChunkKey { id, blob: index as u32, chunk: chunk as u32 }.encode();
            store.data.insert(key, frame(&key, part)).expect("insert chunk");
        }
        meta.blobs.push(BlobMeta {
            name: name.clone(),
            len: payload.len() as u64,
            chunks: payload.len().div_ceil(size) as u32,
            crc32: crc32fast::hash(payload),
        });
        meta.bytes += payload.len() as u64;
    }
    store.meta.insert(id.to_be_bytes(), encode_meta(&meta).expect("encode")).expect("insert meta");
    store.flush().expect("flush");
    meta
}

#[test]
fn round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open_with(dir.path(), small_chunks()).expect("open");
    let written = store.write(meta(10), blobs(1)).expect("write");

    assert_eq!(written.id, 1);
    assert_eq!(written.bytes, 10_500 + 3000 + 13);
    assert!(
        chrono::DateTime::parse_from_rfc3339(&written.created_at).is_ok(),
        "{}",
        written.created_at
    );
    let names: Vec<_> = written
        .blobs
        .iter()
        .map(|b| (b.name.as_str(), b.chunks))
        .collect();
    assert_eq!(
        names,
        [
            ("model", 11),
            ("optimizer", 3),
            ("tokenizer", 1),
            ("empty", 0)
        ]
    );

    let (loaded, got) = store.load(written.id).expect("load");
    assert_eq!(loaded, written);
    assert_eq!(loaded.records, meta(10).records);
    assert_eq!(loaded.offsets, meta(10).offsets);
    assert_eq!(loaded.extra, meta(10).extra);
    assert_eq!(got.len(), 4);
    for (name, bytes) in blobs(1) {
        assert_eq!(got.get(&name), Some(bytes.as_slice()), "blob {name}");
        assert_eq!(
            store.read_blob(written.id, &name).expect("read_blob"),
            bytes
        );
        let streamed: Vec<u8> = store
            .blob_chunks(written.id, &name)
            .expect("blob_chunks")
            .collect::<Result<Vec<_>, _>>()
            .expect("chunks verify")
            .concat();
        assert_eq!(streamed, bytes);
    }

    // And the same after a reopen, from disk.
    drop(store);
    let store = CheckpointStore::open_with(dir.path(), small_chunks()).expect("reopen");
    let (_, mut got) = store
        .load_latest_valid()
        .expect("load latest")
        .expect("one checkpoint");
    assert_eq!(got.take("model"), Some(payload(10_500, 1)));
}

#[test]
fn missing_things_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open_with(dir.path(), small_chunks()).expect("open");
    assert!(store.load_latest_valid().expect("empty store").is_none());
    assert!(store.list().expect("list").is_empty());
    assert!(matches!(
        store.load(1),
        Err(CheckpointError::NotFound { id: 1 })
    ));
    let id = store.write(meta(1), blobs(1)).expect("write").id;
    assert!(matches!(
        store.read_blob(id, "nope"),
        Err(CheckpointError::NoSuchBlob { name, .. }) if name == "nope"
    ));
    let duplicate = vec![("a".to_owned(), vec![1]), ("a".to_owned(), vec![2])];
    assert!(matches!(
        store.write(meta(2), duplicate),
        Err(CheckpointError::Invalid(_))
    ));
    assert!(matches!(
        store.write(meta(2), vec![(String::new(), vec![1])]),
        Err(CheckpointError::Invalid(_))
    ));
    assert_eq!(
        store.list().expect("list").len(),
        1,
        "rejected writes leave nothing"
    );
}

#[test]
fn ids_increase_across_prune_and_reopen_and_list_is_newest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open_with(dir.path(), small_chunks()).expect("open");
    let first: Vec<u64> = (0..4)
        .map(|s| store.write(meta(s), blobs(s)).expect("write").id)
        .collect();
    assert_eq!(first, [1, 2, 3, 4]);
    assert_eq!(store.prune(2).expect("prune"), 2);
    let listed: Vec<u64> = store.list().expect("list").iter().map(|m| m.id).collect();
    assert_eq!(listed, [4, 3]);
    assert_eq!(
        ids_with_chunks(&store),
        BTreeSet::from([3, 4]),
        "pruned chunks are deleted"
    );

    // Pruning everything must not make ids restart.
    assert_eq!(store.prune(0).expect("prune all"), 2);
    drop(store);
    let store = CheckpointStore::open_with(dir.path(), small_chunks()).expect("reopen");
    assert!(store.list().expect("list").is_empty());
    let (latest, logs) = capture_logs(|| store.load_latest_valid());
    assert!(latest.expect("load").is_none());
    assert!(
        !logs.contains("WARN"),
        "an emptied store is not damaged: {logs}"
    );
    assert_eq!(store.write(meta(9), blobs(9)).expect("write").id, 5);
    assert_eq!(store.write(meta(10), blobs(10)).expect("write").id, 6);
    let listed: Vec<u64> = store.list().expect("list").iter().map(|m| m.step).collect();
    assert_eq!(listed, [10, 9]);
}

#[test]
fn a_damaged_chunk_skips_to_the_previous_checkpoint_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open_with(dir.path(), small_chunks()).expect("open");
    let older = store.write(meta(1), blobs(1)).expect("write");
    let newer = store.write(meta(2), blobs(2)).expect("write");

    // Flip one payload byte of the newest checkpoint's optimizer, chunk 1, in its data file.
    let path = data_file_of(&store, &newer);
    let mut bytes = std::fs::read(&path).expect("read data file");
    assert_eq!(bytes.len() as u64, newer.data_file.as_ref().expect("file").bytes);
    bytes[file_offset(&newer, 1, 1, 100) as usize] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write data file");

    assert!(
        matches!(store.load(newer.id), Err(CheckpointError::Corrupt { id, .. }) if id == newer.id)
    );
    assert!(matches!(
        store.read_blob(newer.id, "optimizer"),
        Err(CheckpointError::Corrupt { .. })
    ));
    assert_eq!(
        store
            .read_blob(newer.id, "model")
            .expect("model blob intact"),
        payload(10_500, 2)
    );
    assert_eq!(store.read_blob(newer.id, "tokenizer").expect("after the damage"), b"{\"vocab\": {}}");

    let (loaded, logs) = capture_logs(|| store.load_latest_valid());
    let (meta, got) = loaded.expect("load").expect("the older checkpoint");
    assert_eq!(meta.id, older.id);
    assert_eq!(got.get("model"), Some(payload(10_500, 1).as_slice()));
    assert!(logs.contains("WARN"), "no warning in {logs:?}");
    assert!(
        logs.contains(&format!("checkpoint {} failed verification", newer.id)),
        "{logs}"
    );

    // A short file (chunk 4 of the model cut in half) is caught too.
    let older_path = data_file_of(&store, &older);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&older_path)
        .expect("open")
        .set_len(file_offset(&older, 0, 4, 500))
        .expect("truncate");
    match store.load(older.id) {
        Err(CheckpointError::Corrupt { reason, .. }) => assert!(reason.contains("truncated"), "{reason}"),
        other => panic!("expected a corrupt checkpoint, got {other:?}"),
    }
    assert!(
        store.load_latest_valid().expect("load").is_none(),
        "nothing verifies any more"
    );
}

/// Stores written before 2026-12-01 hold their chunks in the sled data tree: they load,
/// verify, stream and prune as before, and a damaged or missing chunk there is caught.
#[test]
fn checkpoints_of_older_stores_load_verify_and_prune() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open_with(dir.path(), small_chunks()).expect("open");
    let old = write_legacy(&store, meta(1), &blobs(1));
    let older = write_legacy(&store, meta(2), &blobs(2));
    assert!(old.data_file.is_none());
    drop(store);
    let store = CheckpointStore::open_with(dir.path(), small_chunks()).expect("reopen");
    let (loaded, got) = store.load(old.id).expect("an old checkpoint loads");
    assert_eq!(loaded, old);
    for (name, bytes) in blobs(1) {
        assert_eq!(got.get(&name), Some(bytes.as_slice()), "blob {name}");
    }
    let newest = store.write(meta(3), blobs(3)).expect("write after old ones");
    assert!(newest.id > older.id && newest.data_file.is_some());
    assert_eq!(store.verify(older.id).expect("verify").id, older.id);

    // Flip a payload byte inside sled, then remove a chunk: both are caught.
    let key = ChunkKey { id: older.id, blob: 1, chunk: 1 }.encode();
    let mut value = store.data.get(key).expect("get").expect("chunk exists").to_vec();
    value[100] ^= 0x01;
    store.data.insert(key, value).expect("insert");
    assert!(matches!(store.read_blob(older.id, "optimizer"), Err(CheckpointError::Corrupt { .. })));
    store.data.remove(ChunkKey { id: old.id, blob: 0, chunk: 4 }.encode()).expect("remove");
    assert!(matches!(store.load(old.id), Err(CheckpointError::Corrupt { .. })));

    assert_eq!(store.prune(1).expect("prune"), 2);
    assert_eq!(ids_with_chunks(&store), BTreeSet::from([newest.id]), "old chunks pruned from sled");
}

#[test]
fn a_damaged_metadata_record_skips_to_the_previous_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open_with(dir.path(), small_chunks()).expect("open");
    let older = store.write(meta(1), blobs(1)).expect("write");
    let newer = store.write(meta(2), blobs(2)).expect("write");
    let key = newer.id.to_be_bytes();
    let mut record = store
        .meta
        .get(key)
        .expect("get")
        .expect("meta exists")
        .to_vec();
    let last = record.len() - 3;
    record[last] ^= 0x20;
    store.meta.insert(key, record).expect("insert");

    let (latest, logs) = capture_logs(|| store.load_latest_valid());
    assert_eq!(latest.expect("load").expect("older").0.id, older.id);
    assert!(
        logs.contains(&format!("checkpoint {} failed verification", newer.id)),
        "{logs}"
    );
    let (listed, logs) = capture_logs(|| store.list());
    assert_eq!(
        listed
            .expect("list")
            .iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        [older.id]
    );
    assert!(logs.contains("WARN"), "{logs}");
}

/// Finds every occurrence of `needle` in the files under `dir` and flips a byte in each.
fn corrupt_files(dir: &Path, needle: &[u8]) -> usize {
    let mut hits = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .expect("read_dir")
                    .map(|e| e.expect("entry").path()),
            );
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("read file");
        let mut found = false;
        let mut at = 0;
        while let Some(pos) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
            bytes[at + pos + needle.len() / 2] ^= 0xff;
            at += pos + needle.len();
            found = true;
            hits += 1;
        }
        if found {
            std::fs::write(&path, &bytes).expect("write file");
        }
    }
    hits
}

#[test]
fn file_level_damage_to_the_newest_checkpoint_loads_the_previous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions::default();
    let store = CheckpointStore::open_with(dir.path(), options.clone()).expect("open");
    let older = store
        .write(meta(1), vec![("model".to_owned(), payload(300_000, 11))])
        .expect("write");
    let newer = store
        .write(meta(2), vec![("model".to_owned(), payload(300_000, 12))])
        .expect("write");
    drop(store);

    // A stretch from the middle of the newest model, wherever sled put it (log or blob file).
    let newest = payload(300_000, 12);
    let hits = corrupt_files(dir.path(), &newest[150_000..150_064]);
    assert!(hits > 0, "the newest payload was not found on disk");

    let store = CheckpointStore::open_with(dir.path(), options).expect("reopen after damage");
    let (loaded, logs) = capture_logs(|| store.load_latest_valid());
    let (meta, mut got) = loaded.expect("load").expect("a checkpoint verifies");
    assert_eq!(meta.id, older.id, "the damaged newest must be skipped");
    assert_eq!(got.take("model"), Some(payload(300_000, 11)));
    assert!(logs.contains(&format!("checkpoint {}", newer.id)), "{logs}");
}

#[test]
fn an_interrupted_write_is_invisible_and_collected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open_with(dir.path(), small_chunks()).expect("open");
    let done = store.write(meta(1), blobs(1)).expect("write");
    let pruned_meanwhile = store.write(meta(2), blobs(2)).expect("write");

    // A crash after the data file of id 3 was written but before its metadata record.
    let orphan = done.id.max(pruned_meanwhile.id) + 1;
    data_file::write(store.path(), orphan, &blobs(3), 1000).expect("orphan data file");
    // The same in a store of the older layout: chunks of id 4 in the data tree, no record.
    let tree_orphan = orphan + 1;
    for chunk in 0..5 {
        let key = ChunkKey {
            id: tree_orphan,
            blob: 0,
            chunk,
        }
        .encode();
        store
            .data
            .insert(key, frame(&key, &payload(1000, u64::from(chunk))))
            .expect("insert");
    }
    // A crash in the middle of pruning id 2: metadata gone, data still there.
    store
        .meta
        .remove(pruned_meanwhile.id.to_be_bytes())
        .expect("remove");
    store.flush().expect("flush");
    assert_eq!(
        store.list().expect("list").len(),
        1,
        "the orphan is never listed"
    );
    assert_eq!(
        store.load_latest_valid().expect("load").expect("one").0.id,
        done.id
    );
    drop(store);

    let (store, logs) = capture_logs(|| CheckpointStore::open_with(dir.path(), small_chunks()));
    let store = store.expect("reopen");
    assert!(logs.contains("never completed"), "{logs}");
    assert_eq!(ids_with_chunks(&store), BTreeSet::from([done.id]));
    assert_eq!(
        store.load_latest_valid().expect("load").expect("one").0.id,
        done.id
    );
    let next = store.write(meta(3), blobs(3)).expect("write").id;
    assert!(next > tree_orphan, "id {next} reuses an id at or below {tree_orphan}");

    // Garbage left while the store is open is collected by the next prune.
    data_file::write(store.path(), next + 7, &blobs(4), 1000).expect("junk file");
    let key = ChunkKey {
        id: next + 8,
        blob: 0,
        chunk: 0,
    }
    .encode();
    store
        .data
        .insert(key, frame(&key, b"junk"))
        .expect("insert");
    // A file that is not a data file is left alone.
    std::fs::write(store.path().join("data").join("README"), b"not ours").expect("write");
    assert_eq!(store.prune(5).expect("prune"), 0);
    assert_eq!(ids_with_chunks(&store), BTreeSet::from([done.id, next]));
    assert!(store.path().join("data").join("README").exists());
    assert!(store.write(meta(4), blobs(4)).expect("write").id > next + 8);
}

#[test]
fn a_second_open_is_refused_as_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path()).expect("open");
    match CheckpointStore::open(dir.path()) {
        Err(CheckpointError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(store);
    CheckpointStore::open(dir.path()).expect("open again once released");
}

/// The bound the issue asks for (at most 3x the live checkpoint bytes with the newest 3
/// kept). With a data file per checkpoint, deleted whole by pruning, the store holds the live
/// bytes plus sled's small log of metadata records (in sled itself it levelled off at 2.2-2.8x:
/// BENCHMARKS.md "Checkpoints").
#[test]
fn size_on_disk_stays_bounded_with_the_newest_three_kept() {
    const CHECKPOINT: usize = 16 * 1024 * 1024;
    const KEEP: usize = 3;
    // Every sample and the store after a reopen within BOUND; unbounded growth (11 GB with
    // 1 MiB sled values) or sled's 2.2-2.8x fail it.
    const BOUND: f64 = 1.25;
    const SPIKE: f64 = 1.25;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path()).expect("open");
    let mut ratios = Vec::new();
    for i in 0..20_u64 {
        store
            .write(meta(i), vec![("model".to_owned(), payload(CHECKPOINT, i))])
            .expect("write");
        store.prune(KEEP).expect("prune");
        let kept = usize::try_from(i + 1).expect("small").min(KEEP);
        let live = (kept * CHECKPOINT) as f64;
        ratios.push(store.size_on_disk().expect("size") as f64 / live);
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    assert!(
        median <= BOUND && ratios.iter().all(|r| *r <= SPIKE),
        "size / live bytes per checkpoint: {ratios:.2?} (median {median:.2})"
    );
    drop(store);
    let store = CheckpointStore::open(dir.path()).expect("reopen");
    let reopened = store.size_on_disk().expect("size") as f64 / (KEEP * CHECKPOINT) as f64;
    assert!(reopened <= BOUND, "after reopen: {reopened:.2}x live");
    assert_eq!(store.list().expect("list").len(), KEEP);
}

#[test]
fn store_and_blob_reader_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<CheckpointStore>();
    assert_send::<BlobChunks>();

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(CheckpointStore::open_with(dir.path(), small_chunks()).expect("open"));
    let id = store.write(meta(1), blobs(1)).expect("write").id;
    let chunks = store.blob_chunks(id, "model").expect("blob_chunks");
    let reader =
        std::thread::spawn(move || chunks.map(|c| c.map(|c| c.len())).sum::<Result<usize, _>>());
    let writer = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.write(meta(2), blobs(2)).map(|m| m.id))
    };
    assert_eq!(
        reader
            .join()
            .expect("reader thread")
            .expect("chunks verify"),
        10_500
    );
    assert_eq!(
        writer.join().expect("writer thread").expect("write"),
        id + 1
    );
}

/// Environment variable that turns the test below into its own child writer process.
const KILL_CHILD_ENV: &str = "UNIMOD_CHECKPOINT_KILL_CHILD";

/// Real crashes: a child process (this test binary, re-executed) writes and prunes
/// checkpoints in a loop and is killed with SIGKILL at varying moments; after each kill the
/// store must open, every listed checkpoint must verify and hold exactly the bytes written
/// for its step, and ids must keep increasing.
#[test]
fn kill_during_writes_leaves_a_consistent_store() {
    const LEN: usize = 3 * 1024 * 1024;
    if let Some(dir) = std::env::var_os(KILL_CHILD_ENV) {
        let store = CheckpointStore::open(Path::new(&dir)).expect("child: open");
        let mut step = store
            .list()
            .expect("child: list")
            .first()
            .map_or(0, |m| m.step + 1);
        loop {
            let blobs = vec![
                ("model".to_owned(), payload(LEN, step)),
                ("replay".to_owned(), payload(LEN / 3, !step)),
            ];
            store.write(meta(step), blobs).expect("child: write");
            store.prune(3).expect("child: prune");
            step += 1;
        }
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut last_id = 0;
    let mut seen_any = false;
    // At least 4 kills; more (up to 10) if a loaded machine kept the child from finishing one.
    for round in 0..10_u64 {
        if round >= 4 && seen_any {
            break;
        }
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "checkpoint::store::tests::kill_during_writes_leaves_a_consistent_store",
                "--test-threads=1",
            ])
            .env(KILL_CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn child writer");
        std::thread::sleep(std::time::Duration::from_millis(400 + 170 * (round % 4)));
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");

        let store = CheckpointStore::open(dir.path()).expect("open after kill");
        let listed = store.list().expect("list");
        assert!(
            listed.len() <= 4,
            "prune keeps 3 (+1 written before its prune): {}",
            listed.len()
        );
        for m in &listed {
            let (loaded, blobs) = store.load(m.id).expect("every listed checkpoint verifies");
            assert_eq!(
                blobs.get("model"),
                Some(payload(LEN, loaded.step).as_slice()),
                "checkpoint {}",
                m.id
            );
            assert_eq!(
                blobs.get("replay"),
                Some(payload(LEN / 3, !loaded.step).as_slice())
            );
            assert_eq!(loaded.records, meta(loaded.step).records);
        }
        if let Some(newest) = listed.first() {
            assert!(
                newest.id >= last_id,
                "ids went back from {last_id} to {}",
                newest.id
            );
            last_id = newest.id;
            seen_any = true;
        }
        assert_eq!(
            ids_with_chunks(&store),
            listed.iter().map(|m| m.id).collect::<BTreeSet<_>>(),
            "chunks of interrupted writes are collected on open"
        );
    }
    assert!(
        seen_any,
        "the child never completed a checkpoint; nothing was tested"
    );
}

/// Every file the newest checkpoint's write created inside the store's subdirectories (its
/// data file; in the sled layout before 2026-12-01, sled's blob files under `blobs/`) missing
/// or truncated: the store opens, the start skips that checkpoint with a warning naming it
/// and loads the previous one byte for byte. Before data files, a missing sled blob file
/// stopped the open ("tried to serialize Uninitialized" in sled's recovery, caught as an
/// error naming the store) and a truncated one could take the previous checkpoint with it.
#[test]
fn a_missing_or_truncated_blob_file_skips_to_the_previous_checkpoint() {
    fn files_below(dir: &Path) -> BTreeSet<std::path::PathBuf> {
        let mut out = BTreeSet::new();
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            if entry.path().is_dir() {
                for file in std::fs::read_dir(entry.path()).expect("read_dir").flatten() {
                    out.insert(file.path());
                }
            }
        }
        out
    }
    for truncate in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StoreOptions::default();
        let store = CheckpointStore::open_with(dir.path(), options.clone()).expect("open");
        let older = store.write(meta(1), vec![("model".to_owned(), payload(2_000_000, 21))]).expect("write");
        let before = files_below(dir.path());
        let newer = store.write(meta(2), vec![("model".to_owned(), payload(2_000_000, 22))]).expect("write");
        drop(store);
        let fresh: Vec<_> = files_below(dir.path()).difference(&before).cloned().collect();
        assert!(!fresh.is_empty(), "the newest checkpoint made no file of its own");
        for f in &fresh {
            if truncate {
                let len = std::fs::metadata(f).expect("stat").len();
                std::fs::OpenOptions::new().write(true).open(f).expect("open").set_len(len / 3).expect("truncate");
            } else {
                std::fs::remove_file(f).expect("remove");
            }
        }
        let store = CheckpointStore::open_with(dir.path(), options)
            .unwrap_or_else(|e| panic!("truncate={truncate}: the store must open: {e}"));
        let (loaded, logs) = capture_logs(|| store.load_latest_valid());
        assert!(logs.contains(&format!("checkpoint {}", newer.id)) && logs.contains("WARN"), "{logs}");
        let (found, mut got) = loaded
            .unwrap_or_else(|e| panic!("truncate={truncate}: {e}"))
            .expect("the previous checkpoint");
        assert_eq!(found.id, older.id, "truncate={truncate}: the unreadable newest must be skipped");
        assert_eq!(got.take("model"), Some(payload(2_000_000, 21)));
        assert!(
            matches!(store.latest_valid_meta(), Ok(Some(ref m)) if m.id == older.id),
            "truncate={truncate}: the HTTP answer skips it too"
        );
        // Training goes on: the next checkpoint is written and loads.
        let next = store.write(meta(3), vec![("model".to_owned(), payload(1000, 23))]).expect("write");
        assert!(next.id > newer.id);
        assert_eq!(store.load_latest_valid().expect("load").expect("newest").0.id, next.id);
    }
}
