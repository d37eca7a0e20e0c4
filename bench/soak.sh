#!/usr/bin/env bash
# bench/soak.sh: memory under backpressure (issue 9, item 5). Large images (raw image records
# of SOAK_IMAGE_MB each, incompressible) are kept waiting in Kafka faster than the daemon takes
# them, for SOAK_MINUTES, while the daemon's RSS is sampled every 10 s. The daemon's queues are
# bounded by records and by bytes (`kafka.queue_max_bytes`) and the consumer pauses on them,
# so the RSS must stay flat; before that bound the queues could hold about 11 GB of 5 MB
# images.
#
#   bench/soak.sh                       # 30 minutes, 5 MB images
#   SOAK_MINUTES=5 bench/soak.sh        # a shorter run
#
# Environment: SOAK_MINUTES (30), SOAK_IMAGE_MB (5), SOAK_AHEAD (records kept waiting in
# Kafka, 60), SOAK_SIZE (model size, tiny), SOAK_OUT (where rss.csv and summary.json go:
# bench/soak-out). The daemon inherits the environment, so allocator settings such as
# MALLOC_ARENA_MAX can be compared run against run. rss.csv also splits the RSS by mapping
# (heap, other anonymous, file-backed). Uses $CARGO_TARGET_DIR (target)/release binaries when present, else debug.
# Disk: every image the daemon consumes was written to the broker's sqlite file once (the
# scratch directory is removed at the end).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MINUTES=${SOAK_MINUTES:-30}
IMAGE_MB=${SOAK_IMAGE_MB:-5}
AHEAD=${SOAK_AHEAD:-60}
SIZE=${SOAK_SIZE:-tiny}
OUT=${SOAK_OUT:-bench/soak-out}
# shellcheck source=bench/lib.sh
source bench/lib.sh
mkdir -p "$OUT"
bench_start soak
mport=$(free_port)

# Texts for the tokenizer's bootstrap and the text objective; images are the load.
"$BIN/unimod-synth" --out "$work/data" --pairs 200 --texts 2000 --images 0 --eval 0 --seed 9 >/dev/null
"$BIN/unimod" produce --brokers "127.0.0.1:$port" --kind text --topic soak.text "$work/data/text.jsonl" >/dev/null
"$BIN/unimod" produce --brokers "127.0.0.1:$port" --kind pair --topic soak.pair "$work/data/pairs.jsonl" >/dev/null
say "writing 20 incompressible BMP images of ${IMAGE_MB} MB"
python3 - "$work/images" "$IMAGE_MB" <<'PY'
import os, struct, sys
out, mb = sys.argv[1], float(sys.argv[2])
os.makedirs(out, exist_ok=True)
side = int((mb * 1e6 / 3) ** 0.5) // 4 * 4
row = side * 3
for i in range(20):
    pixels = os.urandom(row * side)
    header = b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    with open(f"{out}/noise-{i:02}.bmp", "wb") as f:
        f.write(header + info + pixels)
PY
publish_images() { # a slow broker (sqlite busy with the last round) fails a round: the next loop retries
    "$BIN/unimod" produce --brokers "127.0.0.1:$port" --kind image --topic soak.image "$work/images" >/dev/null 2>>"$work/produce.err" ||
        { say "a produce round failed (broker busy?); retrying later"; return 1; }
}

cat >"$work/unimod.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$port"
topics = { text = "soak.text", image = "soak.image", pair = "soak.pair" }
dead_letter_topic = "soak.dlq"
[storage]
path = "$work/store"
checkpoint_every_seconds = 60
[model]
size = "$SIZE"
[text]
vocab_size = 2000
bootstrap_records = 1000
[metrics]
listen = "127.0.0.1:$mport"
[log]
format = "json"
TOML
produced=0
while ((produced < AHEAD)); do publish_images && produced=$((produced + 20)); done
say "unimod run for $MINUTES minutes ($PROFILE build, model $SIZE); RSS every 10 s -> $OUT/rss.csv"
"$BIN/unimod" run --config "$work/unimod.toml" --max-seconds $((MINUTES * 60)) >"$work/run.log" 2>&1 &
daemon_pid=$!
metric() { # sum of a metric's series, optionally filtered by a label fragment
    { curl -fsS --max-time 2 "http://127.0.0.1:$mport/metrics" 2>/dev/null || true; } |
        awk -v n="$1" -v f="${2:-}" '$1 ~ "^"n"({|$)" && index($1, f) { s += $2 } END { print s + 0 }'
}
# Where the RSS lives, from /proc/PID/smaps: the main heap ([heap]), other anonymous memory
# (glibc's per-thread arenas, large allocations mmapped on their own, thread stacks), and
# file-backed pages (the binary, libraries); plus how many anonymous mappings of 32 MiB or more
# exist (glibc reserves 64 MiB per arena).
smaps_split() {
    awk '/^[0-9a-f]+-[0-9a-f]+ / {
            kind = ($6 == "[heap]") ? "heap" : ($6 == "" || $6 ~ /^\[(anon|stack)/) ? "anon" : ($6 ~ /^\[/) ? "other" : "file"
         }
         /^Size:/ { if (kind == "anon" && $2 >= 32768) big++ }
         /^Rss:/ { rss[kind] += $2 }
         END { printf "%d,%d,%d,%d", rss["heap"], rss["anon"], rss["file"], big }' "/proc/$1/smaps" 2>/dev/null || echo "0,0,0,0"
}
echo "seconds,rss_kib,image_records_trained,images_pending,image_lag,produced,heap_kib,anon_kib,file_kib,anon_maps_32mib" >"$OUT/rss.csv"
start=$SECONDS
while kill -0 "$daemon_pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$daemon_pid/status" 2>/dev/null || echo 0)
    trained=$(metric unimod_records_total 'kind="image",outcome="trained"')
    pending=$(metric unimod_records_pending 'kind="image"')
    lag=$(metric unimod_kafka_consumer_lag 'soak.image')
    echo "$((SECONDS - start)),$rss,$trained,$pending,$lag,$produced,$(smaps_split "$daemon_pid")" >>"$OUT/rss.csv"
    # Keep the backlog ahead of the daemon: images always wait in Kafka.
    for _ in 1 2 3; do
        [[ ${lag%.*} -lt $AHEAD ]] || break
        publish_images || break
        produced=$((produced + 20))
        lag=$((${lag%.*} + 20))
    done
    sleep 10
done
wait "$daemon_pid" || true
daemon_pid=
python3 - "$OUT" "$MINUTES" "$IMAGE_MB" "$PROFILE" "$SIZE" <<'PY' | tee "$OUT/summary.json"
import csv, json, sys
out, minutes, mb, profile, size = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
rows = [r for r in csv.DictReader(open(f"{out}/rss.csv")) if int(r["rss_kib"]) > 0]
rss = [(int(r["seconds"]), int(r["rss_kib"]) / 1024) for r in rows]
settled = [m for s, m in rss if s >= 300] or [m for _, m in rss]
half = len(settled) // 2
first, second = settled[:half] or settled, settled[half:] or settled
print(json.dumps({
    "minutes": minutes, "image_mb": mb, "profile": profile, "size": size, "samples": len(rss),
    "images_trained": float(rows[-1]["image_records_trained"]) if rows else 0,
    "images_produced": int(rows[-1]["produced"]) if rows else 0,
    "rss_mib_max": round(max(m for _, m in rss), 1) if rss else None,
    "rss_mib_after_5min": {"min": round(min(settled), 1), "max": round(max(settled), 1)} if settled else None,
    "rss_mib_mean_first_half": round(sum(first) / len(first), 1) if first else None,
    "rss_mib_mean_second_half": round(sum(second) / len(second), 1) if second else None,
    "last_split_mib": {k: round(int(rows[-1][k + "_kib"]) / 1024, 1) for k in ("heap", "anon", "file")} if rows else None,
    "last_anon_maps_32mib": int(rows[-1]["anon_maps_32mib"]) if rows else None,
}))
PY
