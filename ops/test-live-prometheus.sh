#!/usr/bin/env bash
# ops/test-live-prometheus.sh: the dashboard and the rules against a real Prometheus server
# scraping a real unimod daemon.
#
#   ops/test-live-prometheus.sh HOST:PORT     # a running daemon's [metrics] listen address
#   ops/test-live-prometheus.sh --daemon      # starts its own: tansu, a synthetic stream, unimod run
#   ops/test-live-prometheus.sh --self-test   # against ops/testdata/fake_unimod_exporter.py
#
# --daemon (what CI runs) needs tansu on the PATH and built binaries: UNIMOD_BIN and
# UNIMOD_SYNTH_BIN, by default the newer of target/{release,debug}/{unimod,unimod-synth}. It
# starts a broker on a free port, publishes a small synthetic stream (with a few bad records and
# a few image URLs served by a local HTTP server, so that the rejection and fetch series
# exist), runs `unimod run` with frequent checkpoints until it has trained and checkpointed,
# then checks it as below, and stops everything.
#
# What it does:
#   1. starts `prometheus` (Debian package `prometheus`) on a free local port, with a temporary
#      storage directory and a config that scrapes HOST:PORT every second as job "unimod" and
#      loads ops/prometheus/unimod.rules.yml (evaluated every second);
#   2. waits until the target is up and has been scraped SCRAPES times (default 8);
#   3. evaluates through the HTTP API (/api/v1/query) every PromQL expression of
#      ops/grafana/unimod.json (Grafana variables substituted, see ops/promql_exprs.py) and of
#      the rule files: each must parse and evaluate; each dashboard panel query and template
#      variable query must return data;
#   4. checks that the scrape had no error and every rule evaluates with health "ok";
#   5. stops Prometheus and removes its files on exit, Ctrl-C included.
#
# Exit 0 when all passed; 1 with every failing expression listed; 2 on bad usage.
#
# The daemon must have trained a little before this is meaningful: every panel needs its
# metric to exist, so by then it should have trained steps, written a checkpoint (the
# checkpoint panels show nothing before the first one), and have seen at least one rejected
# record and one image URL fetch (labelled series appear with their first event) unless the
# daemon exports those label sets at zero from the start.
#
# Environment: SCRAPES (default 8), WAIT_SECONDS (default 90: limit for step 2),
# PROMETHEUS (default: prometheus on PATH), KEEP=1 keeps the temporary directory,
# TRAIN_WAIT_SECONDS (default 600: --daemon's limit for training and the first checkpoint).

set -euo pipefail

ops=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
scrapes=${SCRAPES:-8}
wait_seconds=${WAIT_SECONDS:-90}
prometheus=${PROMETHEUS:-prometheus}

usage() {
    sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
case $1 in
-h | --help) usage ;;
esac

if ! command -v "$prometheus" >/dev/null; then
    echo "test-live-prometheus: $prometheus not found (Debian: apt-get install prometheus)" >&2
    exit 2
fi

tmp=$(mktemp -d -t unimod-live-prom.XXXXXX)
pids=()
fake=
cleanup() {
    local rc=$?
    # Newest first: the daemon drains (final checkpoint) while its broker still runs.
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "test-live-prometheus: kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts the fake exporter with extra arguments; sets fake to its HOST:PORT. (Not run in a
# command substitution, so that its pid reaches the cleanup list.)
start_fake() {
    local out=$tmp/exporter.${#pids[@]}
    python3 -u "$ops/testdata/fake_unimod_exporter.py" --port 0 "$@" >"$out" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do
        grep -q '^listening on ' "$out" && break
        sleep 0.1
    done
    fake=$(sed -n 's/^listening on //p' "$out")
    [[ -n $fake ]] || { echo "test-live-prometheus: fake exporter did not start" >&2; exit 1; }
}

if [[ $1 == --self-test ]]; then
    # The check must pass on a complete exporter and fail, naming the panel, when a metric
    # is missing.
    start_fake
    full=$fake
    echo "self-test 1/2: complete fake exporter on $full: must pass"
    "$0" "$full" || { echo "self-test: FAILED on the complete exporter" >&2; exit 1; }
    start_fake --omit unimod_replay_buffer_items
    partial=$fake
    echo "self-test 2/2: fake exporter without unimod_replay_buffer_items on $partial: must fail"
    if "$0" "$partial" >"$tmp/partial.out" 2>&1; then
        cat "$tmp/partial.out"
        echo "self-test: FAILED: a missing metric went unnoticed" >&2
        exit 1
    fi
    if ! grep -q 'Replay buffer items by kind \[A\]: no data' "$tmp/partial.out"; then
        cat "$tmp/partial.out"
        echo "self-test: FAILED: the failure does not name the panel without data" >&2
        exit 1
    fi
    grep 'FAIL' "$tmp/partial.out" | sed 's/^/    (expected) /'
    echo "self-test: passed"
    exit 0
fi
# A free loopback port.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The sum of one metric's samples on a /metrics page read from stdin ("" when absent).
metric_sum() {
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2; n++ } END { if (n) print s }'
}

if [[ $1 == --daemon ]]; then
    root=$(dirname "$ops")
    # $var when set, else the newer of target/release/NAME and target/debug/NAME (a stale
    # release build must not stand in for a fresh debug one, or the other way round).
    pick() {
        local name=$1 var=$2 d best=
        if [[ -n ${!var:-} ]]; then echo "${!var}"; return; fi
        for d in "${CARGO_TARGET_DIR:-$root/target}"/{release,debug}; do
            if [[ -x $d/$name ]] && { [[ -z $best ]] || [[ $d/$name -nt $best ]]; }; then
                best=$d/$name
            fi
        done
        if [[ -n $best ]]; then echo "$best"; return; fi
        echo "test-live-prometheus: $name not built (cargo build --release -p unimod -p unimod-e2e) and $var not set" >&2
        exit 2
    }
    unimod=$(pick unimod UNIMOD_BIN) || exit 2
    synth=$(pick unimod-synth UNIMOD_SYNTH_BIN) || exit 2
    command -v tansu >/dev/null || { echo "test-live-prometheus: tansu not on the PATH" >&2; exit 2; }

    # Broker and topics.
    bport=$(free_port)
    burl=tcp://127.0.0.1:$bport
    mkdir -p "$tmp/broker"
    # setsid: Ctrl-C reaches this script only, and cleanup stops the daemon (one SIGTERM: drain)
    # before its broker.
    (cd "$tmp/broker" && exec setsid tansu broker --listener-url "$burl" --advertised-listener-url "$burl" \
        --storage-engine sqlite://broker.db >broker.log 2>&1) &
    pids+=($!)
    for t in unimo.text unimo.image unimo.pair unimo.dead-letter; do
        for try in $(seq 30); do
            out=$(tansu topic create "$t" --broker "$burl" --partitions 2 2>&1) && break
            [[ $out == *"already exists"* ]] && break
            ((try < 30)) || { echo "$out" >&2; exit 1; }
            sleep 0.5
        done
    done

    # Stream: pairs, texts, images, bad records, and pairs whose images come by URL (one 404).
    "$synth" --out "$tmp/data" --pairs 300 --texts 200 --images 100 --eval 0 --size 32 \
        --image-files --bad >/dev/null
    hport=$(free_port)
    python3 -m http.server --bind 127.0.0.1 --directory "$tmp/data/images" "$hport" >"$tmp/http.log" 2>&1 &
    pids+=($!)
    for i in 0 1 2 3 4; do
        printf '{"id": "url-%s", "caption": "a shape served over http", "image_url": "http://127.0.0.1:%s/img-%s.png"}\n' \
            "$i" "$hport" "$i"
    done >"$tmp/data/url_pairs.jsonl"
    printf '{"id": "url-404", "caption": "a missing image", "image_url": "http://127.0.0.1:%s/missing.png"}\n' \
        "$hport" >>"$tmp/data/url_pairs.jsonl"
    brokers=127.0.0.1:$bport
    d=$tmp/data
    "$unimod" produce --brokers "$brokers" --kind text --topic unimo.text "$d/text.jsonl" "$d/bad_text.jsonl"
    "$unimod" produce --brokers "$brokers" --kind image --topic unimo.image "$d/image.jsonl" "$d/bad_image.jsonl"
    "$unimod" produce --brokers "$brokers" --kind pair --topic unimo.pair "$d/pairs.jsonl" "$d/bad_pairs.jsonl" \
        "$d/url_pairs.jsonl"

    # The daemon, with checkpoints every few steps.
    mport=$(free_port)
    sport=$(free_port)
    {
        echo '[kafka]'
        echo "brokers = \"$brokers\""
        echo 'group_id = "live-prometheus"'
        echo 'dead_letter_topic = "unimo.dead-letter"'
        echo '[storage]'
        echo "path = \"$tmp/store\""
        echo 'checkpoint_every_steps = 5'
        echo 'checkpoint_every_seconds = 30'
        echo 'keep_checkpoints = 2'
        echo '[train]'
        echo 'batch_size = 8'
        echo 'warmup_steps = 5'
        echo '[text]'
        echo 'bootstrap_records = 100'
        echo 'vocab_size = 1000'
        echo '[fetch]'
        echo 'allow_private_networks = true'
        echo '[metrics]'
        echo "listen = \"127.0.0.1:$mport\""
        echo '[serve]'
        echo "listen = \"127.0.0.1:$sport\""
        echo 'refresh_steps = 5'
    } >"$tmp/unimod.toml"
    "$unimod" check-config --config "$tmp/unimod.toml" >/dev/null
    setsid "$unimod" run --config "$tmp/unimod.toml" --max-seconds 1800 >"$tmp/unimod.log" 2>&1 &
    pids+=($!)
    daemon=${pids[-1]}
    echo "unimod run on 127.0.0.1:$mport (broker $brokers); waiting until it has trained and checkpointed"
    deadline=$((SECONDS + ${TRAIN_WAIT_SECONDS:-600}))
    while :; do
        page=$(curl -fsS --max-time 2 "http://127.0.0.1:$mport/metrics" 2>/dev/null || true)
        steps=$(metric_sum unimod_train_steps_total <<<"$page")
        ckpt=$(metric_sum unimod_checkpoint_last_success_timestamp_seconds <<<"$page")
        fetches=$(metric_sum unimod_image_fetch_seconds_count <<<"$page")
        if [[ -n $steps && -n $ckpt && -n $fetches && $ckpt != 0 ]] &&
            ((${steps%.*} >= 10 && ${fetches%.*} >= 1)); then
            break
        fi
        if ! kill -0 "$daemon" 2>/dev/null || ((SECONDS > deadline)); then
            echo "test-live-prometheus: the daemon did not train and checkpoint" \
                "(steps=${steps:-none}, checkpoint=${ckpt:-none}, fetches=${fetches:-none}); its log ends:" >&2
            tail -30 "$tmp/unimod.log" >&2
            exit 1
        fi
        sleep 2
    done
    echo "trained ${steps%.*} steps, checkpointed, fetched ${fetches%.*} image(s)"
    # The serving routes (the dashboard's serving panels): a few requests of each kind, once
    # the first snapshot is there (503 before it).
    serve=http://127.0.0.1:$sport/v1
    for _ in $(seq 60); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -H 'content-type: application/json' \
            -d '{"text": "a red circle"}' "$serve/embed" || true)
        [[ $code == 200 ]] && break
        sleep 2
    done
    [[ $code == 200 ]] || { echo "test-live-prometheus: /v1/embed never answered 200 (last $code)" >&2; exit 1; }
    for i in 0 1 2; do
        curl -fsS -o /dev/null --max-time 60 -H 'content-type: application/json' \
            -d "{\"image_url\": \"http://127.0.0.1:$hport/img-$i.png\"}" "$serve/caption"
        curl -fsS -o /dev/null --max-time 60 -H 'content-type: application/json' -d '{"prompt": "a blue"}' "$serve/generate"
    done
    curl -s -o /dev/null --max-time 10 -H 'content-type: application/json' -d '{"nope": 1}' "$serve/embed" || true
    echo "served embed, caption and generate requests on $serve"
    # The check runs while the daemon keeps training; the cleanup stops it with SIGTERM.
    "$0" "127.0.0.1:$mport"
    exit $?
fi

target=$1

if ! curl -fsS -o /dev/null --max-time 5 "http://$target/metrics"; then
    echo "test-live-prometheus: nothing answers on http://$target/metrics" >&2
    exit 1
fi

port=$(free_port)
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $ops/prometheus/unimod.rules.yml
scrape_configs:
  - job_name: unimod
    static_configs:
      - targets: ["$target"]
EOF

"$prometheus" --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
    --web.listen-address="127.0.0.1:$port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
api=http://127.0.0.1:$port
echo "prometheus on $api scraping $target every 1s"

deadline=$((SECONDS + wait_seconds))
until curl -fsS -o /dev/null "$api/-/ready" 2>/dev/null; do
    if ((SECONDS > deadline)) || ! kill -0 "${pids[-1]}" 2>/dev/null; then
        echo "test-live-prometheus: prometheus did not become ready; its log:" >&2
        cat "$tmp/prometheus.log" >&2
        exit 1
    fi
    sleep 0.5
done

echo "waiting for $scrapes successful scrapes"
until curl -fsS "$api/api/v1/query" --data-urlencode \
    "query=count_over_time(up{job=\"unimod\"}[5m]) >= $scrapes and up{job=\"unimod\"} == 1" |
    python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["data"]["result"] else 1)'; do
    if ((SECONDS > deadline)); then
        echo "test-live-prometheus: $target not scraped $scrapes times within ${wait_seconds}s" >&2
        curl -fsS "$api/api/v1/targets" >&2 || true
        exit 1
    fi
    sleep 1
done

python3 "$ops/promql_exprs.py" "$ops/grafana/unimod.json" "$ops/prometheus/unimod.rules.yml" >"$tmp/exprs.jsonl"

# Evaluate everything; the report goes to stdout, the exit status says whether all passed.
API=$api python3 - "$tmp/exprs.jsonl" <<'PY'
import json
import math
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

api = os.environ["API"]


def get(path, params=None):
    url = api + path
    data = urllib.parse.urlencode(params).encode() if params else None
    try:
        with urllib.request.urlopen(url, data=data, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        # Prometheus answers 400/422 with a JSON error body for bad queries.
        return json.load(e)


failures = []
items = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
for it in items:
    res = get("/api/v1/query", {"query": it["expr"]})
    label = f'{it["kind"]:8} {it["title"]}'
    if res.get("status") != "success":
        failures.append(f'{label}: {res.get("errorType")}: {res.get("error")}\n      {it["expr"]}')
        print(f"  FAIL  {label}: {res.get('error')}")
        continue
    data = res["data"]
    if data["resultType"] in ("vector", "matrix"):
        n = len(data["result"])
        nan = sum(1 for s in data["result"] if "value" in s and s["value"][1] in ("NaN", "+Inf", "-Inf"))
    else:
        n, nan = 1, 0
    if it["kind"] in ("panel", "variable") and n == 0:
        failures.append(f"{label}: no data\n      {it['expr']}")
        print(f"  FAIL  {label}: no data")
        continue
    note = f", {nan} NaN/Inf (no observations in the window)" if nan else ""
    print(f"  ok    {label}: {n} series{note}")

targets = get("/api/v1/targets")["data"]["activeTargets"]
for t in targets:
    if t["health"] != "up" or t.get("lastError"):
        failures.append(f'target {t["scrapeUrl"]}: health {t["health"]}: {t.get("lastError")}')
print(f"  {'ok  ' if targets else 'FAIL'}  {len(targets)} scrape target(s), last errors: "
      f"{[t.get('lastError') or None for t in targets]}")
if not targets:
    failures.append("no scrape target")

groups = get("/api/v1/rules")["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
bad = [r for r in rules if r.get("health") != "ok"]
for r in bad:
    failures.append(f'rule {r["name"]}: health {r.get("health")}: {r.get("lastError")}')
print(f"  {'ok  ' if rules and not bad else 'FAIL'}  {len(rules)} rules loaded, {len(bad)} unhealthy")
if not rules:
    failures.append("no rules loaded")

if failures:
    print(f"\ntest-live-prometheus: {len(failures)} failure(s):")
    for f in failures:
        print(f"  - {f}")
    sys.exit(1)
print(f"\ntest-live-prometheus: all {len(items)} expressions evaluated; every panel has data")
PY
