#!/usr/bin/env bash
# bench/run_throughput.sh: end-to-end fresh records/s of `unimod run` on CPU, and the training
# stall caused by checkpoints, against a local tansu broker with a synthetic stream.
#
#   bench/run_throughput.sh [SECONDS] [SIZE] [CHECKPOINT_EVERY_STEPS]
#
# Uses target/release/unimod and unimod-synth when present (cargo build --release -p unimod
# -p unimod-e2e), else target/debug. Prints one summary line per measurement.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_RUN=${1:-60}
SIZE=${2:-tiny}
EVERY=${3:-20}
TARGET=${CARGO_TARGET_DIR:-target}
PROFILE=release
[[ -x $TARGET/release/unimod && -x $TARGET/release/unimod-synth ]] || PROFILE=debug
BIN=$TARGET/$PROFILE
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
broker_pid=
daemon_pid=
cleanup() {
    [[ -n $daemon_pid ]] && kill -9 "$daemon_pid" 2>/dev/null || true
    [[ -n $broker_pid ]] && kill "$broker_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
(cd "$work" && exec tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine sqlite://broker.db >broker.log 2>&1) &
broker_pid=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
for t in text image pair; do tansu topic create "bench.$t" --broker "tcp://127.0.0.1:$port" --partitions 2 >/dev/null; done
"$BIN/unimod-synth" --out "$work/data" --pairs 6000 --texts 3000 --images 2000 --eval 0 --seed 5 >/dev/null
for k in pair text image; do
    f=$work/data/${k}s.jsonl; [[ $k == text ]] && f=$work/data/text.jsonl; [[ $k == image ]] && f=$work/data/image.jsonl
    "$BIN/unimod" produce --brokers "127.0.0.1:$port" --kind $k --topic "bench.$k" "$f" >/dev/null
done
cat >"$work/unimod.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$port"
topics = { text = "bench.text", image = "bench.image", pair = "bench.pair" }
[storage]
path = "$work/store"
checkpoint_every_steps = $EVERY
checkpoint_every_seconds = 0
[model]
size = "$SIZE"
[train]
replay_ratio = 0.05
[text]
vocab_size = 2000
bootstrap_records = 2000
[metrics]
listen = "127.0.0.1:$mport"
[log]
format = "json"
TOML
start=$(date +%s.%N)
"$BIN/unimod" run --config "$work/unimod.toml" --max-seconds "$SECONDS_RUN" >"$work/run.log" 2>&1 &
daemon_pid=$!
sleep $((SECONDS_RUN - 2))
curl -s "http://127.0.0.1:$mport/metrics" >"$work/metrics.txt" || true
wait "$daemon_pid"; daemon_pid=
end=$(date +%s.%N)
first_step=$(grep -m1 '"checkpoint durable"' "$work/run.log" | python3 -c 'import sys,json; print(json.loads(sys.stdin.read() or "{}").get("timestamp",""))')
"$BIN/unimod" checkpoint show latest --config "$work/unimod.toml" --json >"$work/ckpt.json"
python3 - "$work" "$start" "$end" "$PROFILE" "$SIZE" "$EVERY" <<'PY'
import json, sys, re
work, start, end, profile, size, every = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:]
ck = json.load(open(f"{work}/ckpt.json"))
r = ck["records"]; fresh = r["text"] + r["image"] + r["pair"]
m = open(f"{work}/metrics.txt").read()
def val(name):
    x = re.search(rf"^{name} ([0-9.e+-]+)$", m, re.M)
    return float(x.group(1)) if x else float("nan")
steps, step_sum = val("unimod_train_step_seconds_count"), val("unimod_train_step_seconds_sum")
st_n, st_sum = val("unimod_checkpoint_stall_seconds_count"), val("unimod_checkpoint_stall_seconds_sum")
ck_n, ck_sum = val("unimod_checkpoint_seconds_count"), val("unimod_checkpoint_seconds_sum")
wall = end - start
print(f"profile={profile} size={size} wall={wall:.1f}s steps={ck['step']} fresh_records={fresh} "
      f"fresh_records_per_s={fresh / wall:.1f} mean_step_ms={1000 * step_sum / max(steps, 1):.1f} "
      f"checkpoints={int(ck_n)} mean_checkpoint_write_ms={1000 * ck_sum / max(ck_n, 1):.1f} "
      f"mean_stall_ms={1000 * st_sum / max(st_n, 1):.1f} checkpoint_bytes={ck['bytes']}")
PY
