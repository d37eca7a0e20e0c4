#!/usr/bin/env bash
# bench/gpu.sh: the one-command GPU check (issue 8, item 5), for a machine with an NVIDIA card
# and the CUDA driver. From the repository root:
#
#   bench/gpu.sh                      # everything below; about 10-20 minutes with a cold build
#
# It
#   1. prints the card (nvidia-smi),
#   2. builds with `--features cuda` (release): the device check and the daemon,
#   3. runs the CPU-vs-CUDA equivalence check (a tiny model built on the CPU, loaded on the
#      card: embeddings and three steps' losses within 1e-3),
#   4. measures the base-size training step at the shapes of
#      ../shared/bench/torch_unimo_step.py (batch 32 pairs, 32 tokens, 31 regions of 192
#      features, vocabulary 8192) and the same step in PyTorch on the same card, as samples/s
#      and model FLOPs utilisation (MFU) against the card's peak,
#   5. runs 200 steps of `unimod run` on the quickstart stream with train.device = "cuda",
#   6. writes one JSON summary: $GPU_OUT/summary.json (default bench/gpu-out/).
#
# Environment: GPU_OUT, GPU_STEPS (timed step-benchmark steps, 100), GPU_RUN_STEPS (200),
# GPU_PEAK_TFLOPS (the card's dense FP32 peak, when the table below lacks the card; MFU is
# also given against the TF32 tensor-core peak where known), TORCH_BASELINE (the PyTorch
# script), SKIP_BUILD=1, SKIP_RUN=1 (no daemon run), SKIP_TORCH=1.
# Needs: cargo, the CUDA driver (nvidia-smi), python3 with torch (CUDA build) for the
# baseline, and what ops/quickstart.sh needs (tansu) for step 5.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${GPU_OUT:-$root/bench/gpu-out}
steps=${GPU_STEPS:-100}
run_steps=${GPU_RUN_STEPS:-200}
torch_script=${TORCH_BASELINE:-$root/../shared/bench/torch_unimo_step.py}
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$out"
say() { printf '==> %s\n' "$*" >&2; }
json_or_null() { if [[ -s $1 ]]; then cat "$1"; else echo null; fi; }

# 1. The card ------------------------------------------------------------------------------
say "card"
if ! command -v nvidia-smi >/dev/null; then
    echo "bench/gpu.sh: nvidia-smi not found: this needs a machine with an NVIDIA card and its driver" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | tee "$out/card.txt"
card=$(head -1 "$out/card.txt" | cut -d, -f1 | sed 's/^ *//; s/ *$//')

# 2. Build -----------------------------------------------------------------------------------
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    say "cargo build --release --features cuda (device check, daemon, synthetic stream)"
    cargo build --release --locked -p unimod-model --features cuda --example device_check
    cargo build --release --locked -p unimod --features cuda --bin unimod
    cargo build --release --locked -p unimod-e2e --bin unimod-synth
fi
check=$target/release/examples/device_check
# Each stage runs under its own time bound (GPU_STAGE_SECONDS, 240) and a failing stage is
# recorded, not fatal: one call on a lent machine should bring back every stage that works.
stage_seconds=${GPU_STAGE_SECONDS:-240}
stage() { # stage NAME OUTFILE COMMAND...
    local name=$1 file=$2 rc
    shift 2
    local t0=$SECONDS
    set +e
    timeout "$stage_seconds" "$@" 2>"$out/$name.err" | tee "$file"
    rc=${PIPESTATUS[0]}
    set -e
    echo "{\"stage\": \"$name\", \"exit\": $rc, \"seconds\": $((SECONDS - t0))}" >>"$out/stages.jsonl"
    if ((rc != 0)); then
        say "stage $name failed (exit $rc; 124 = over ${stage_seconds}s); last lines of its stderr:"
        tail -15 "$out/$name.err" >&2 || true
    fi
}
: >"$out/stages.jsonl"

# 3. Equivalence -----------------------------------------------------------------------------
say "CPU vs CUDA equivalence (tiny model, fixed batch)"
stage compare "$out/compare.jsonl" "$check" --mode compare
grep '"check": "compare"' "$out/compare.jsonl" | tail -1 >"$out/compare.json" || true

# 4. Base-size step beside PyTorch -------------------------------------------------------------
say "base-size step on CUDA: $steps timed steps, batch 32"
stage train "$out/train.jsonl" "$check" --mode train --size base --steps "$steps" --batch 32
grep '"check": "train"' "$out/train.jsonl" | tail -1 >"$out/unimod_step.json" || true
: >"$out/torch_step.json"
if [[ ${SKIP_TORCH:-0} != 1 ]] && [[ -f $torch_script ]] \
    && python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    say "PyTorch at the same shapes on the same card"
    stage torch "$out/torch.jsonl" python3 "$torch_script" --size base --batch 32 --device cuda --steps 30
    tail -1 "$out/torch.jsonl" >"$out/torch_step.json"
else
    say "PyTorch with CUDA (or $torch_script) not available: baseline skipped"
fi

# 5. 200 steps of the daemon on the quickstart stream ------------------------------------------
: >"$out/run.json"
if [[ ${SKIP_RUN:-0} != 1 ]]; then
    say "unimod run: $run_steps steps on the quickstart stream, train.device = \"cuda\""
    qs=$out/quickstart
    rm -rf "$qs"
    started=$(date +%s.%N)
    set +e
    QS_DIR=$qs QS_SKIP_INSTALL=1 QS_SKIP_BUILD=1 QS_BIN_DIR=$target/release QS_STEPS=$run_steps \
        UNIMOD_TRAIN__DEVICE=cuda timeout "${GPU_RUN_SECONDS:-400}" ops/quickstart.sh >"$out/quickstart.out" 2>&1
    rc=$?
    set -e
    ended=$(date +%s.%N)
    tail -20 "$out/quickstart.out" >&2
    python3 - "$qs" "$rc" "$started" "$ended" "$run_steps" >"$out/run.json" <<'PY'
import json, sys
qs, rc, t0, t1, want = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
events = []
try:
    for line in open(f"{qs}/unimod.log", errors="replace"):
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
except OSError:
    pass
device = next((e for e in events if e.get("message") == "training device"), {})
progress = [e for e in events if e.get("message") == "training"]
print(json.dumps({"exit": rc, "steps_asked": want, "wall_seconds": round(t1 - t0, 1),
                  "adapter": device.get("adapter"), "backend": device.get("backend"), "fusion": device.get("fusion"),
                  "progress": [{k: e.get(k) for k in ("step", "loss", "step_ms")} for e in progress]}))
PY
fi

# 6. Summary -----------------------------------------------------------------------------------
say "summary: $out/summary.json"
python3 - "$card" "$out" <<'PY' | tee "$out/summary.json"
import json, os, sys
card, out = sys.argv[1], sys.argv[2]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            text = f.read().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None
# Dense peaks in TFLOP/s: (FP32 on CUDA cores, TF32 on tensor cores). Public data sheets.
PEAKS = {"H200": (67.0, 494.7), "H100 SXM": (67.0, 494.7), "H100 PCIe": (51.2, 378.0), "H100": (67.0, 494.7),
         "A100": (19.5, 156.0), "L40S": (91.6, 183.0), "L40": (90.5, 90.5), "L4": (30.3, 60.0),
         "A10": (31.2, 62.5), "RTX 4090": (82.6, 82.6), "RTX 3090": (35.6, 35.6), "V100": (15.7, None),
         "T4": (8.1, None)}
peak = next((v for k, v in PEAKS.items() if k.lower() in card.lower()), (None, None))
if os.environ.get("GPU_PEAK_TFLOPS"):
    peak = (float(os.environ["GPU_PEAK_TFLOPS"]), peak[1])
# Model FLOPs of one step at the shapes of torch_unimo_step.py, base size (12 layers, 768
# hidden, FFN 3072): three encoder passes per pair (joint 63 positions, image 31, text 32),
# the MLM head over the 32 text positions with the tied 8192-word output, region regression
# over the 31 rows; backward = 2x forward. Both implementations do at least this work.
L, H, F, V, feat, T, N = 12, 768, 3072, 8192, 192, 32, 31
def encoder(seq):
    return L * (2 * seq * (4 * H * H + 2 * H * F) + 4 * seq * seq * H)
per_sample = encoder(N + T) + encoder(N) + encoder(T) + 2 * T * (H * H + H * V) + 2 * N * H * feat
flops_per_sample = 3 * per_sample
def mfu(step):
    if not step or not step.get("samples_per_s"):
        return None
    achieved = step["samples_per_s"] * flops_per_sample / 1e12
    r = {"tflops": round(achieved, 2)}
    if peak[0]:
        r["mfu_fp32"] = round(achieved / peak[0], 4)
    if peak[1]:
        r["mfu_tf32"] = round(achieved / peak[1], 4)
    return r
unimod, torch = load("unimod_step.json"), load("torch_step.json")
summary = {
    "card": card, "peak_tflops_fp32": peak[0], "peak_tflops_tf32": peak[1],
    "model_flops_per_sample": flops_per_sample,
    "equivalence": load("compare.json"),
    "unimod_step": unimod, "unimod_mfu": mfu(unimod),
    "torch_step": torch, "torch_mfu": mfu(torch),
    "unimod_vs_torch": (round(unimod["samples_per_s"] / torch["samples_per_s"], 3)
                        if unimod and torch and torch.get("samples_per_s") else None),
    "daemon_run": load("run.json"),
    "stages": [json.loads(l) for l in open(os.path.join(out, "stages.jsonl")) if l.strip()],
}
print(json.dumps(summary, indent=2))
PY
