//! Checkpoint store benchmarks (issue 4, item 8): write time and bytes of model-like
//! checkpoints against a plain sequential file write + fsync of the same bytes in the same
//! run, load (read + verify) time, and the store's size on disk after 20 checkpoints with the
//! newest 3 kept.
//!
//! Run: `cargo bench -p unimod --bench checkpoint` (tiny and small, about a minute).
//! Environment:
//! - `UNIMOD_BENCH_SIZES=tiny,small,base`: payload sizes to time (default `tiny,small`;
//!   base is about 1.5 GB and is written once, not in a loop);
//! - `UNIMOD_BENCH_GROWTH=tiny,small`: sizes for the 20-checkpoint growth run (default
//!   `tiny,small`), `UNIMOD_BENCH_GROWTH_MB=N` adds a run with N-MB checkpoints;
//! - `UNIMOD_BENCH_CHUNK=BYTES`: chunk size for the growth runs (default: the store's
//!   default), to reproduce the measurement that chose it;
//! - `UNIMOD_BENCH_DIR=DIR`: where to put the stores (default: a temporary directory).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use unimod::checkpoint::{CheckpointMeta, CheckpointStore, StoreOptions, DEFAULT_CHUNK_SIZE};

/// A model size: layers, hidden width, vocabulary.
struct Size {
    name: &'static str,
    layers: u64,
    hidden: u64,
    vocab: u64,
    /// Timed repetitions (median reported).
    reps: usize,
}

const SIZES: [Size; 3] = [
    Size {
        name: "tiny",
        layers: 2,
        hidden: 128,
        vocab: 8_000,
        reps: 5,
    },
    Size {
        name: "small",
        layers: 4,
        hidden: 256,
        vocab: 32_000,
        reps: 3,
    },
    Size {
        name: "base",
        layers: 12,
        hidden: 768,
        vocab: 50_265,
        reps: 1,
    },
];

impl Size {
    /// Approximate parameter count of a UNIMO encoder of this size: word and position
    /// embeddings, `layers` Transformer layers (4h^2 attention + 8h^2 FFN + biases and
    /// LayerNorms), the visual embedding (768-d patch features + 5-d locations) and the
    /// tied MLM head's transform.
    fn parameters(&self) -> u64 {
        let h = self.hidden;
        let embeddings = (self.vocab + 514) * h + 2 * h;
        let layer = 12 * h * h + 13 * h;
        let visual = 768 * h + 5 * h + 4 * h;
        let head = h * h + 3 * h + self.vocab;
        embeddings + self.layers * layer + visual + head
    }

    /// Checkpoint payload: f32 weights plus two Adam moments.
    fn payload_bytes(&self) -> usize {
        usize::try_from(self.parameters() * 4 * 3).expect("fits in memory")
    }
}

/// Incompressible, deterministic bytes (xorshift), so no layer can cheat by compressing.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = vec![0_u8; len];
    for word in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
    out
}

/// A checkpoint shaped like the daemon's: weights, two optimizer moments, small extras.
fn blobs(total: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let third = total / 3;
    vec![
        ("model".to_owned(), payload(third, seed)),
        (
            "optimizer".to_owned(),
            payload(total - third, seed.wrapping_add(1)),
        ),
        (
            "tokenizer".to_owned(),
            payload(200_000, seed.wrapping_add(2)),
        ),
        (
            "config".to_owned(),
            br#"{"arch":"unimo","size":"bench"}"#.to_vec(),
        ),
    ]
}

fn blob_bytes(blobs: &[(String, Vec<u8>)]) -> u64 {
    blobs.iter().map(|(_, b)| b.len() as u64).sum()
}

/// The baseline: one sequential write of the same bytes to a fresh file, then fsync.
fn file_write(dir: &Path, blobs: &[(String, Vec<u8>)]) -> Duration {
    let path = dir.join("baseline.bin");
    let start = Instant::now();
    let mut file = File::create(&path).expect("create baseline file");
    for (_, bytes) in blobs {
        file.write_all(bytes).expect("write baseline file");
    }
    file.sync_all().expect("fsync baseline file");
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(&path).expect("remove baseline file");
    elapsed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    mb(bytes) / d.as_secs_f64()
}

fn env_list(key: &str, default: &str) -> Vec<String> {
    std::env::var(key)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn write_speed(root: &Path, size: &Size) {
    let dir = root.join(format!("speed-{}", size.name));
    let store = CheckpointStore::open(&dir).expect("open store");
    let (mut store_t, mut file_t, mut load_t) = (vec![], vec![], vec![]);
    let mut bytes = 0;
    for rep in 0..size.reps {
        let blobs = blobs(size.payload_bytes(), rep as u64 + 7);
        bytes = blob_bytes(&blobs);
        // Alternate the order so page-cache state favours neither side.
        if rep % 2 == 0 {
            file_t.push(file_write(root, &blobs));
        }
        let start = Instant::now();
        let meta = store
            .write(
                CheckpointMeta {
                    step: rep as u64,
                    ..Default::default()
                },
                blobs.clone(),
            )
            .expect("write");
        store_t.push(start.elapsed());
        if rep % 2 == 1 {
            file_t.push(file_write(root, &blobs));
        }
        drop(blobs);
        store.prune(3).expect("prune");
        let start = Instant::now();
        let (_, loaded) = store.load(meta.id).expect("load");
        load_t.push(start.elapsed());
        drop(loaded);
    }
    let (s, f, l) = (median(store_t), median(file_t), median(load_t));
    println!(
        "| {:<5} | {:>11} | {:>9.1} | {:>8.2} s ({:>5.0} MB/s) | {:>8.2} s ({:>5.0} MB/s) | {:>5.2} | {:>8.2} s ({:>5.0} MB/s) | {} |",
        size.name,
        size.parameters(),
        mb(bytes),
        s.as_secs_f64(),
        mbps(bytes, s),
        f.as_secs_f64(),
        mbps(bytes, f),
        f.as_secs_f64() / s.as_secs_f64(),
        l.as_secs_f64(),
        mbps(bytes, l),
        size.reps,
    );
    drop(store);
    std::fs::remove_dir_all(&dir).expect("remove store");
}

fn growth(root: &Path, name: &str, bytes_per_checkpoint: usize, chunk_size: usize) {
    const CHECKPOINTS: usize = 20;
    const KEEP: usize = 3;
    let dir = root.join(format!("growth-{name}"));
    let options = StoreOptions {
        chunk_size,
        ..StoreOptions::default()
    };
    let store = CheckpointStore::open_with(&dir, options.clone()).expect("open store");
    let mut peak = 0;
    let mut live = 0;
    let start = Instant::now();
    for i in 0..CHECKPOINTS {
        let blobs = blobs(bytes_per_checkpoint, 1000 + i as u64);
        live = blob_bytes(&blobs) * KEEP as u64;
        store
            .write(
                CheckpointMeta {
                    step: i as u64,
                    ..Default::default()
                },
                blobs,
            )
            .expect("write");
        store.prune(KEEP).expect("prune");
        peak = peak.max(store.size_on_disk().expect("size"));
    }
    let elapsed = start.elapsed();
    let after = store.size_on_disk().expect("size");
    drop(store);
    let store = CheckpointStore::open_with(&dir, options).expect("reopen store");
    let reopened = store.size_on_disk().expect("size");
    println!(
        "| {:<6} | {:>7} | {:>9.1} | {:>9.1} | {:>9.1} ({:.2}x) | {:>9.1} ({:.2}x) | {:>9.1} ({:.2}x) | {:>6.1} s |",
        name,
        chunk_size,
        mb(live / KEEP as u64),
        mb(live),
        mb(peak),
        peak as f64 / live as f64,
        mb(after),
        after as f64 / live as f64,
        mb(reopened),
        reopened as f64 / live as f64,
        elapsed.as_secs_f64(),
    );
    drop(store);
    std::fs::remove_dir_all(&dir).expect("remove store");
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too: nothing to filter.
    let tmp;
    let root = match std::env::var("UNIMOD_BENCH_DIR") {
        Ok(dir) => std::path::PathBuf::from(dir),
        Err(_) => {
            tmp = tempfile::tempdir().expect("temporary directory");
            tmp.path().to_owned()
        }
    };
    std::fs::create_dir_all(&root).expect("bench directory");
    println!("checkpoint store benchmark in {}", root.display());
    println!();
    println!("| size  | parameters  | bytes (MB) | store write (median)        | file write + fsync (median) | ratio | load + verify (median)       | reps |");
    println!("|-------|-------------|-----------|-----------------------------|-----------------------------|-------|------------------------------|------|");
    let wanted = env_list("UNIMOD_BENCH_SIZES", "tiny,small");
    for size in SIZES.iter().filter(|s| wanted.iter().any(|w| w == s.name)) {
        write_speed(&root, size);
    }
    println!();
    println!("| growth | chunk   | MB/ckpt   | live MB   | peak MB (x live)  | after 20 (x live) | reopened (x live) | time     |");
    println!("|--------|---------|-----------|-----------|-------------------|-------------------|-------------------|----------|");
    let chunk_size = std::env::var("UNIMOD_BENCH_CHUNK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(DEFAULT_CHUNK_SIZE);
    let wanted = env_list("UNIMOD_BENCH_GROWTH", "tiny,small");
    for size in SIZES.iter().filter(|s| wanted.iter().any(|w| w == s.name)) {
        growth(&root, size.name, size.payload_bytes(), chunk_size);
    }
    if let Some(n) = std::env::var("UNIMOD_BENCH_GROWTH_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        growth(&root, &format!("{n}MB"), n * 1_048_576, chunk_size);
    }
}
