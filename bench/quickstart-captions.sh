#!/usr/bin/env bash
# bench/quickstart-captions.sh: how well the quickstart's model names the colours and shapes
# of its held-out images, at every checkpoint of one quickstart run (issue 12).
#
# Runs a copy of ops/quickstart.sh (so that editing the script meanwhile cannot break the run)
# with a checkpoint every CAP_EVERY steps, all kept; then, for each checkpoint, greedy
# `unimod caption --json` over the held-out pairs scored by ops/caption_words.py (chance: the
# same captions against other images' references) and `unimod eval --json` (retrieval recall).
# Appends one JSON line per checkpoint to CAP_OUT.
#
#   QS_PAIRS=24000 QS_TEXTS=1200 QS_IMAGES=600 QS_EVAL=200 QS_SEED=7 UNIMOD_TRAIN__SEED=7 \
#   UNIMOD_MODEL__WEIGHTS__CAPTION=3 bench/quickstart-captions.sh
#
# Knobs: the quickstart's own (QS_PAIRS, QS_TEXTS, QS_IMAGES, QS_EVAL, QS_SEED, QS_SIZE, ...)
# and UNIMOD_* overrides, passed through and recorded in every line ("overrides");
# CAP_EVERY (150), CAP_OUT (bench/quickstart-captions-DATE.jsonl), CAP_LABEL (a name for the
# run, "quickstart"), CAP_KEEP=1 to keep the run's folder (printed at the end), CAP_FROM=DIR
# to score the checkpoints of an earlier run's folder instead of training (its QS_* knobs
# must be given again for the record).
# Binaries: QS_BIN_DIR, else $CARGO_TARGET_DIR (or target)/release when built, else debug;
# nothing is installed or built (QS_SKIP_INSTALL=1 QS_SKIP_BUILD=1).
#
# Measured with it: BENCHMARKS.md "The quickstart's stream with backdrop crops". A 24000-pair
# run is 1451 steps: about 16 minutes of training with the debug build on 2 cores, plus about
# 40 s of captioning and evaluation per checkpoint.

set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

target=${CARGO_TARGET_DIR:-$root/target}
if [[ -z ${QS_BIN_DIR:-} ]]; then
    QS_BIN_DIR=$target/release
    [[ -x $QS_BIN_DIR/unimod && -x $QS_BIN_DIR/unimod-synth ]] || QS_BIN_DIR=$target/debug
fi
[[ -x $QS_BIN_DIR/unimod && -x $QS_BIN_DIR/unimod-synth ]] || {
    echo "quickstart-captions: no unimod and unimod-synth in $QS_BIN_DIR (cargo build -p unimod --bins)" >&2
    exit 1
}
build=$(basename "$QS_BIN_DIR")
every=${CAP_EVERY:-150}
out=${CAP_OUT:-$root/bench/quickstart-captions-$(date -u +%F).jsonl}
label=${CAP_LABEL:-quickstart}
work=$(mktemp -d)
cleanup() { [[ ${CAP_KEEP:-0} == 1 ]] || rm -rf "$work"; }
trap cleanup EXIT

if [[ -n ${CAP_FROM:-} ]]; then
    # Score an earlier run's folder (a kept CAP_KEEP=1 run, or .quickstart) without training.
    qs=$(cd "$CAP_FROM" && pwd)
    train_s=null
else
    cp ops/quickstart.sh "$work/quickstart.sh"
    qs=$work/qs
    # The copy runs from the repository root (it finds ops/ and the binaries from there).
    sed -i "s|^root=.*|root=$(printf '%q' "$root")|" "$work/quickstart.sh"

    export QS_SKIP_INSTALL=1 QS_SKIP_BUILD=1 QS_BIN_DIR QS_DIR=$qs
    export UNIMOD_STORAGE__KEEP_CHECKPOINTS=${UNIMOD_STORAGE__KEEP_CHECKPOINTS:-1000}
    export UNIMOD_STORAGE__CHECKPOINT_EVERY_STEPS=$every
    export UNIMOD_STORAGE__CHECKPOINT_EVERY_SECONDS=${UNIMOD_STORAGE__CHECKPOINT_EVERY_SECONDS:-1000000}

    echo "==> quickstart ($build build), log in $work/quickstart.log" >&2
    start=$SECONDS
    bash "$work/quickstart.sh" >"$work/quickstart.log" 2>&1 || {
        tail -30 "$work/quickstart.log" >&2
        echo "quickstart-captions: the quickstart failed (log above; folder $work kept)" >&2
        CAP_KEEP=1
        exit 1
    }
    train_s=$((SECONDS - start))
    echo "==> quickstart done in $train_s s; captioning each checkpoint" >&2
fi

config=$qs/unimod.toml
pairs=$qs/data/eval_pairs.jsonl
unimod=$QS_BIN_DIR/unimod
overrides=$(env | grep -E '^UNIMOD_' | grep -v -E '^UNIMOD_STORAGE__' | sort || true)

"$unimod" checkpoint list --config "$config" --json >"$work/checkpoints.json"
python3 - "$work/checkpoints.json" >"$work/ids" <<'EOF'
import json, sys
text = open(sys.argv[1]).read().strip()
try:
    items = json.loads(text)
except json.JSONDecodeError:
    items = [json.loads(l) for l in text.splitlines() if l.strip()]
if isinstance(items, dict):
    items = items.get("checkpoints", [])
for c in sorted(items, key=lambda c: c["step"]):
    print(c["id"], c["step"])
EOF

while read -r id step; do
    "$unimod" caption --config "$config" --checkpoint "$id" --pairs "$pairs" --json >"$work/cap.jsonl" 2>>"$work/caption.log"
    python3 ops/caption_words.py "$work/cap.jsonl" --json >"$work/words.json"
    "$unimod" eval --config "$config" --checkpoint "$id" --pairs "$pairs" --json >"$work/eval.json" 2>>"$work/eval.log"
    python3 - "$work/cap.jsonl" "$work/words.json" "$work/eval.json" "$step" "$label" "$build" "$train_s" "$overrides" >>"$out" <<'EOF'
import json, os, sys
cap, words, ev, step, label, build, train_s, overrides = sys.argv[1:9]
last = [json.loads(l) for l in open(cap) if l.strip()][-1]
env = os.environ
line = {
    "date": __import__("datetime").date.today().isoformat(),
    "run": label,
    "build": build,
    "pairs": int(env.get("QS_PAIRS", 8000)),
    "texts": int(env.get("QS_TEXTS", 400)),
    "images": int(env.get("QS_IMAGES", 200)),
    "eval": int(env.get("QS_EVAL", 100)),
    "data_seed": int(env.get("QS_SEED", 42)),
    "overrides": dict(l.split("=", 1) for l in overrides.splitlines() if "=" in l),
    "decode": "greedy",
    "step": int(step),
    "words": json.load(open(words)),
    "bleu4": last.get("bleu4"),
    "cider": last.get("cider"),
    "recall": json.load(open(ev)),
    "quickstart_seconds": json.loads(train_s),
}
print(json.dumps(line))
w = line["words"]
m, c = w["model"], w["chance"]
print(f"step {step}: colour {m['colour_p']:.2f} ({c['colour_p']:.2f})  shape {m['shape_p']:.2f} ({c['shape_p']:.2f})  "
      f"colour+shape {m['object_p']:.2f} ({c['object_p']:.2f})  CIDEr-D {line['cider']:.2f}", file=sys.stderr)
EOF
done <"$work/ids"

echo "==> appended to $out" >&2
[[ ${CAP_KEEP:-0} == 1 ]] && echo "==> run folder kept: $work" >&2
exit 0
