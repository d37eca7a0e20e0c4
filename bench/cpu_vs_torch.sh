#!/usr/bin/env bash
# bench/cpu_vs_torch.sh: the CPU training step against PyTorch at the same shapes, in the same
# run, alternating (so both see the same machine load): ../shared/bench/torch_unimo_step.py
# and the device check's `train` mode on the CPU backend (32 pairs, 32 tokens, 31 regions of
# 192 features, vocabulary 8192; MLM + MRM + CMCL, AdamW, clipping 1.0), 2 threads each.
#
#   bench/cpu_vs_torch.sh [SIZE=tiny] [ROUNDS=2] [STEPS=10]
#
# Needs python3 with torch (PYTHON=... to pick one). Builds the example with the release
# profile unless PROFILE=dev. Prints one JSON line per measurement and the ratio.
# BIN=path: measure that build of the device check instead of building one.
# BASELINE_BIN=path: another build of the device check (an earlier commit, say) measured in
# the same rounds, so a change is compared with its baseline under the same machine load.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
size=${1:-tiny}
rounds=${2:-2}
steps=${3:-10}
python=${PYTHON:-python3}
profile=${PROFILE:-release}
target=${CARGO_TARGET_DIR:-target}
torch_script=${TORCH_BASELINE:-../shared/bench/torch_unimo_step.py}
if [[ -n ${BIN:-} ]]; then
    bin=$BIN # an already built device check
elif [[ $profile == release ]]; then
    cargo build --release --locked -p unimod-model --example device_check
    bin=$target/release/examples/device_check
else
    cargo build --locked -p unimod-model --example device_check
    bin=$target/debug/examples/device_check
fi
export RAYON_NUM_THREADS=2
out=$(mktemp)
for _ in $(seq "$rounds"); do
    "$python" "$torch_script" --size "$size" --threads 2 --steps "$steps" --warmup 3 | tail -1 | tee -a "$out"
    "$bin" --mode train --size "$size" --steps $((steps + 3)) --batch 32 | grep "\"check\": \"train\"" | tee -a "$out" || true
    if [[ -n ${BASELINE_BIN:-} ]]; then
        "$BASELINE_BIN" --mode train --size "$size" --steps $((steps + 3)) --batch 32 | grep "\"check\": \"train\"" |
            sed 's/"check": "train"/"check": "baseline"/' | tee -a "$out" || true
    fi
done
"$python" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
torch = [r["ms_per_step"] for r in rows if r.get("impl", "").startswith("pytorch")]
ours = [r["ms_per_step"] for r in rows if r.get("check") == "train"]
base = [r["ms_per_step"] for r in rows if r.get("check") == "baseline"]
t, o = statistics.median(torch), statistics.median(ours)
summary = {"torch_ms_per_step": t, "unimod_ms_per_step": o, "speed_vs_torch": round(t / o, 3)}
if base:
    b = statistics.median(base)
    summary.update({"baseline_ms_per_step": b, "baseline_speed_vs_torch": round(t / b, 3), "speedup_over_baseline": round(b / o, 3)})
print(json.dumps(summary))
PY
