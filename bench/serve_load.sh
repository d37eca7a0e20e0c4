#!/usr/bin/env bash
# bench/serve_load.sh: serving latency while the daemon trains, and the training throughput
# that serving costs (issue 12, item 5). In one run, against one local tansu broker and one
# synthetic stream:
#
#   A. `unimod run` with serving off for SERVE_SECONDS: training steps/s;
#   B. the same with `[serve] listen` on and SERVE_CLIENTS (8) clients sending requests
#      back to back (captions of the stream's images, text embeddings and continuations, in
#      turn): p50/p99 latency per route and the training steps/s meanwhile;
#   A2. A again, so that a load drifting on a shared machine shows (the loss is computed
#      against the mean of A and A2).
#
#   bench/serve_load.sh                     # 120 s per phase, tiny model
#   SERVE_SECONDS=60 SERVE_SIZE=small bench/serve_load.sh
#
# Environment: SERVE_SECONDS (120), SERVE_CLIENTS (8), SERVE_SIZE (tiny), SERVE_THREADS
# (serve.threads, 2), SERVE_PAIRS (pairs in the stream, 20000; texts and images a fifth and a
# tenth of it). Uses $CARGO_TARGET_DIR (target)/release binaries when present, else
# debug. Prints one JSON object.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS=${SERVE_SECONDS:-120}
CLIENTS=${SERVE_CLIENTS:-8}
SIZE=${SERVE_SIZE:-tiny}
THREADS=${SERVE_THREADS:-2}
PAIRS=${SERVE_PAIRS:-20000}
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_start serve
"$BIN/unimod-synth" --out "$work/data" --pairs "$PAIRS" --texts $((PAIRS / 5)) --images $((PAIRS / 10)) --eval 40 --seed 7 --image-files >/dev/null
for k in pair text image; do
    f=$work/data/pairs.jsonl; [[ $k == text ]] && f=$work/data/text.jsonl; [[ $k == image ]] && f=$work/data/image.jsonl
    "$BIN/unimod" produce --brokers "127.0.0.1:$port" --kind $k --topic "serve.$k" "$f" >/dev/null
done

# phase NAME SERVE(0|1): runs the daemon (a fresh store and group each time, so both phases
# train the same stream from its start) and prints the phase's JSON.
phase() {
    local name=$1 serving=$2 mport sport
    mport=$(free_port)
    sport=$(free_port)
    {
        echo '[kafka]'
        echo "brokers = \"127.0.0.1:$port\""
        echo "group_id = \"serve-bench-$name\""
        echo 'topics = { text = "serve.text", image = "serve.image", pair = "serve.pair" }'
        echo 'dead_letter_topic = "serve.dlq"'
        echo '[storage]'
        echo "path = \"$work/store-$name\""
        echo 'checkpoint_every_seconds = 600'
        echo '[model]'
        echo "size = \"$SIZE\""
        echo '[text]'
        echo 'vocab_size = 2000'
        echo 'bootstrap_records = 300'
        echo '[metrics]'
        echo "listen = \"127.0.0.1:$mport\""
        if ((serving)); then
            echo '[serve]'
            echo "listen = \"127.0.0.1:$sport\""
            echo 'refresh_steps = 20'
            echo "threads = $THREADS"
        fi
    } >"$work/$name.toml"
    "$BIN/unimod" run --config "$work/$name.toml" --max-seconds $((SECS + 900)) >"$work/$name.log" 2>&1 &
    daemon_pid=$!
    python3 - "$name" "$serving" "$mport" "$sport" "$SECS" "$CLIENTS" "$work/data" <<'PY'
import base64, glob, json, sys, threading, time, urllib.request
name, serving, mport, sport, secs, clients, data = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]), int(sys.argv[6]), sys.argv[7]

def steps():
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("unimod_train_steps_total "):
            return float(line.split()[1])
    return None

def post(route, body):
    req = urllib.request.Request(f"http://127.0.0.1:{sport}/v1/{route}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    except OSError:
        code = 0
    return code, time.perf_counter() - t0

# Warm up: training has begun (and, when serving, the first snapshot answers).
deadline = time.time() + 600
while time.time() < deadline:
    s = steps()
    if s is not None and s >= 25:
        if not serving or post("embed", {"text": "a red circle"})[0] == 200:
            break
    time.sleep(1)
else:
    sys.exit(f"{name}: the daemon did not start training")

images = sorted(glob.glob(f"{data}/images/*.png"))[:64]
payloads = [base64.b64encode(open(p, "rb").read()).decode() for p in images]
lat = {"caption": [], "embed": [], "generate": []}
codes = {}
stop = time.time() + secs
lock = threading.Lock()

def client(k):
    i = k
    while time.time() < stop:
        route = ("caption", "embed", "generate")[i % 3]
        body = ({"image_base64": payloads[i % len(payloads)]} if route == "caption"
                else {"text": "a small blue square"} if route == "embed" else {"prompt": "a red"})
        code, dt = post(route, body)
        with lock:
            codes[code] = codes.get(code, 0) + 1
            if code == 200:
                lat[route].append(dt)
        i += 1

s0, t0 = steps(), time.time()
threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)] if serving else []
for t in threads:
    t.start()
time.sleep(max(0.0, stop - time.time()))
for t in threads:
    t.join()
s1, t1 = steps(), time.time()

def q(xs, p):
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(p * len(xs)))], 1) if xs else None

out = {"phase": name, "serving": bool(serving), "seconds": round(t1 - t0, 1),
       "train_steps_per_s": round((s1 - s0) / (t1 - t0), 3)}
if serving:
    out["clients"] = clients
    out["codes"] = {str(k): v for k, v in sorted(codes.items())}
    out["latency_ms"] = {r: {"n": len(v), "p50": q(v, 0.5), "p99": q(v, 0.99)} for r, v in lat.items()}
print(json.dumps(out))
PY
    kill -TERM "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=
}
say "phase A: training alone, ${SECS}s ($PROFILE build, $SIZE)"
a=$(phase alone 0)
say "phase B: training while $CLIENTS clients call the serving routes, ${SECS}s"
b=$(phase serving 1)
# Phase A again: on a shared machine the load drifts; A before and after B brackets it.
say "phase A2: training alone again, ${SECS}s"
a2=$(phase alone2 0)
python3 - "$a" "$b" "$a2" "$PROFILE" "$SIZE" <<'PY'
import json, sys
a, b, a2 = (json.loads(x) for x in sys.argv[1:4])
base = (a["train_steps_per_s"] + a2["train_steps_per_s"]) / 2
lost = 1 - b["train_steps_per_s"] / base if base else None
print(json.dumps({"profile": sys.argv[4], "size": sys.argv[5], "alone": a, "serving": b, "alone_again": a2,
                  "training_throughput_lost": round(lost, 3) if lost is not None else None}))
PY
