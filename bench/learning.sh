#!/usr/bin/env bash
# bench/learning.sh: what each piece of UNIMO's recipe buys in retrieval recall (issue 11).
#
# One synthetic stream (the quickstart's generator, two colour/shape combinations held out as
# a compositional split) is published once to a local tansu broker; then `unimod run` trains
# a fresh tiny model on it for the same number of steps, once per row and seed, each with its
# own consumer group and store, and `unimod eval` measures held-out recall on pairs of seen
# combinations (eval_pairs.jsonl) and of unseen ones (eval_unseen.jsonl). Rows:
#
#   a  pairs only: MLM + MRM + CMCL (in-batch negatives) + ITM + captioning on pairs (batch
#      LEARN_BATCH/2: the same pairs per step as the other rows, without the single-modal half)
#   b  a + single-modal texts and images (MLM/seq2seq on texts, MRM on images)
#   c  b + hard negatives: rewritten captions and other images' captions close by TF-IDF
#   d  c + retrieved positives (texts by TF-IDF, images by embedding similarity): every
#      objective (MLM, seq2seq on texts, MRM, CMCL, ITM, captioning), the defaults until
#      2026-12-01
#   r  the reference's objective set on everything: MLM + MRM + CMCL only (no ITM, no
#      seq2seq on texts, no captioning), no rewritten negatives, no retrieved positives
#   e  d without ITM (which of the objectives r turns off costs the recall)
#   s  d without ITM and without seq2seq on texts (captioning and the CMCL extras kept): the
#      defaults since 2026-12-01 (objectives), on the pyramid alone
#   o  s with 6 salient object boxes (image.salient_boxes = 6): what they buy; the defaults
#      since 2026-12-02
#   p  the PyTorch reference (../shared/bench/torch_unimo_reference.py), same data, same
#      samples per step (LEARN_BATCH/2 pairs + LEARN_BATCH/4 texts + LEARN_BATCH/4 images)
#
# Every row uses the reference's input representation (grid 1x1..4x4 + [IMG], 8x8 crops; row o
# adds salient object boxes) and
# schedule (learning rate 3e-4, 100 warm-up steps, AdamW, clip 1.0), batch LEARN_BATCH.
#
#   bench/learning.sh                                  # rows a b c d e r s p, seeds 1 2, 300 steps
#   LEARN_ROWS="d p" LEARN_SEEDS=1 LEARN_STEPS=100 bench/learning.sh
#
# Environment: LEARN_STEPS (300), LEARN_BATCH (32), LEARN_SEEDS ("1 2"), LEARN_ROWS
# ("a b c d e r s p"), LEARN_EVAL (200 held-out pairs per split), LEARN_CAPTION_ROWS (rows whose
# model also captions the seen held-out images, greedy: BLEU-4, CIDEr-D and how often the
# captions name the right colours and shapes against chance, ops/caption_words.py; "s"),
# LEARN_OUT (bench/learning-out: results.jsonl, one line per run, and table.md), LEARN_EXPORT (a
# folder: each run's model is exported to LEARN_EXPORT/ROW-SEED, beside the held-out pairs files,
# for ops/caption_probe.py or the twin), UNIMOD_PYTHON (a Python with torch,
# numpy and pillow; default the twin's venv) and LEARN_REFERENCE (the reference script).
# UNIMOD_<SECTION>__<KEY> variables already in the environment apply to every daemon row (a
# row's own overrides win). Uses $CARGO_TARGET_DIR (target)/release binaries when present,
# else debug.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STEPS=${LEARN_STEPS:-300}
BATCH=${LEARN_BATCH:-32}
SEEDS=${LEARN_SEEDS:-1 2}
ROWS=${LEARN_ROWS:-a b c d e r s p}
EVAL=${LEARN_EVAL:-200}
CAPTION_ROWS=${LEARN_CAPTION_ROWS:-s}
OUT=${LEARN_OUT:-bench/learning-out}
PY=${UNIMOD_PYTHON:-$HOME/.cache/unimod/venv/bin/python}
REFERENCE=${LEARN_REFERENCE:-../shared/bench/torch_unimo_reference.py}
# shellcheck source=bench/lib.sh
source bench/lib.sh
mkdir -p "$OUT"
bench_start learn

# Enough fresh records for every step (replay takes 5% of a batch; a margin on top).
pairs=$((STEPS * BATCH / 2 * 11 / 10 + 200))
singles=$((STEPS * BATCH / 4 * 11 / 10 + 200))
say "generating $pairs pairs, $singles texts, $singles images, $EVAL + $EVAL held-out pairs (2 combinations held out)"
"$BIN/unimod-synth" --out "$work/data" --pairs "$pairs" --texts "$singles" --images "$singles" \
    --eval "$EVAL" --holdout 2 --seed 7 >/dev/null
for kind in text image pair; do
    file=$work/data/$kind.jsonl
    [[ $kind == pair ]] && file=$work/data/pairs.jsonl
    "$BIN/unimod" produce --brokers "127.0.0.1:$port" --kind "$kind" --topic "learn.$kind" "$file" >/dev/null
done

row_env() { # ROW -> the config overrides (UNIMOD_<SECTION>__<KEY>=value) that make the row
    local no_extras="UNIMOD_CMCL__HARD_NEGATIVES=0 UNIMOD_CMCL__TFIDF_NEGATIVES=0 UNIMOD_CMCL__TEXT_POSITIVES=0 UNIMOD_CMCL__IMAGE_POSITIVES=0"
    # Rows a-d build up the full recipe: every objective on, as the defaults were until
    # 2026-12-01 (set explicitly, so the rows mean the same with either build).
    local all_objectives="UNIMOD_MODEL__WEIGHTS__ITM=1.0 UNIMOD_MODEL__WEIGHTS__SEQ2SEQ=1.0"
    case $1 in
    # The same pairs per step as the other rows (half the batch), and nothing else.
    a) echo "$all_objectives UNIMOD_TRAIN__BATCH_SIZE=$((BATCH / 2)) UNIMOD_TRAIN__MIX__TEXT=0.0 UNIMOD_TRAIN__MIX__IMAGE=0.0 UNIMOD_TRAIN__MIX__PAIR=1.0 $no_extras" ;;
    b) echo "$all_objectives $no_extras" ;;
    c) echo "$all_objectives UNIMOD_CMCL__TEXT_POSITIVES=0 UNIMOD_CMCL__IMAGE_POSITIVES=0" ;;
    d) echo "$all_objectives" ;;
    e) echo "UNIMOD_MODEL__WEIGHTS__ITM=0.0 UNIMOD_MODEL__WEIGHTS__SEQ2SEQ=1.0" ;;
    r) echo "UNIMOD_MODEL__WEIGHTS__ITM=0.0 UNIMOD_MODEL__WEIGHTS__SEQ2SEQ=0.0 UNIMOD_MODEL__WEIGHTS__CAPTION=0.0 $no_extras" ;;
    # The defaults since 2026-12-01 (given explicitly for builds before them).
    s) echo "UNIMOD_MODEL__WEIGHTS__ITM=0.0 UNIMOD_MODEL__WEIGHTS__SEQ2SEQ=0.0" ;;
    o) echo "UNIMOD_MODEL__WEIGHTS__ITM=0.0 UNIMOD_MODEL__WEIGHTS__SEQ2SEQ=0.0 UNIMOD_IMAGE__SALIENT_BOXES=6" ;;
    *) return 1 ;;
    esac
}

run_daemon() { # ROW SEED
    local row=$1 seed=$2 dir=$work/$1-$2 mport overrides
    mport=$(free_port)
    mkdir -p "$dir"
    # The common config in the file; the row's settings as environment overrides, which every
    # command below reads the same way (docs/configuration.md).
    read -ra overrides <<<"$(row_env "$row")"
    unimod() { env "${overrides[@]}" "$BIN/unimod" "$@"; }
    cat >"$dir/unimod.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$port"
group_id = "learn-$row-$seed"
topics = { text = "learn.text", image = "learn.image", pair = "learn.pair" }
dead_letter_topic = "learn.dlq"
[storage]
path = "$dir/store"
checkpoint_every_steps = 100000
checkpoint_every_seconds = 100000
[model]
size = "tiny"
[train]
batch_size = $BATCH
learning_rate = 3e-4
warmup_steps = 100
seed = $seed
[image]
box_scales = [1, 2, 3, 4]
crop_size = 8
# The reference's representation (the pyramid alone); row o adds salient boxes.
salient_boxes = 0
[text]
vocab_size = 2000
bootstrap_records = 2000
[metrics]
listen = "127.0.0.1:$mport"
[log]
format = "json"
TOML
    unimod check-config --config "$dir/unimod.toml" >/dev/null
    local start=$SECONDS
    unimod run --config "$dir/unimod.toml" --max-steps "$STEPS" >"$dir/run.log" 2>&1 ||
        { tail -5 "$dir/run.log" >&2; say "row $row seed $seed: unimod run failed"; return 1; }
    local train_s=$((SECONDS - start))
    unimod eval --config "$dir/unimod.toml" --pairs "$work/data/eval_pairs.jsonl" --json >"$dir/seen.json"
    unimod eval --config "$dir/unimod.toml" --pairs "$work/data/eval_unseen.jsonl" --json >"$dir/unseen.json"
    echo '{}' >"$dir/words.json"
    if [[ " $CAPTION_ROWS " == *" $row "* ]]; then
        unimod caption --config "$dir/unimod.toml" --pairs "$work/data/eval_pairs.jsonl" --json >"$dir/captions.jsonl"
        python3 ops/caption_words.py "$dir/captions.jsonl" --json >"$dir/words.json"
    fi
    if [[ -n ${LEARN_EXPORT:-} ]]; then
        unimod checkpoint export --config "$dir/unimod.toml" --out "$LEARN_EXPORT/$row-$seed" >/dev/null
        cp "$work/data/eval_pairs.jsonl" "$work/data/eval_unseen.jsonl" "$LEARN_EXPORT/"
    fi
    python3 - "$row" "$seed" "$STEPS" "$train_s" "$dir" <<'PY' | tee -a "$OUT/results.jsonl"
import json, sys
row, seed, steps, train_s, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
seen, unseen = (json.load(open(f"{d}/{n}.json")) for n in ("seen", "unseen"))
out = {"row": row, "seed": seed, "steps": steps, "train_s": train_s,
       "seen": {"i2t": seen["i2t"], "t2i": seen["t2i"]},
       "unseen": {"i2t": unseen["i2t"], "t2i": unseen["t2i"]}}
words = json.load(open(f"{d}/words.json"))
if words:
    last = [json.loads(l) for l in open(f"{d}/captions.jsonl")][-1]
    out["captions"] = {"bleu4": last["bleu4"], "cider": last["cider"], "words": words}
print(json.dumps(out))
PY
}

run_reference() { # SEED
    local seed=$1 dir=$work/ref
    if ! "$PY" -c 'import torch, numpy, PIL' 2>/dev/null || [[ ! -f $REFERENCE ]]; then
        say "row p skipped: $PY lacks torch/numpy/pillow or $REFERENCE is missing"
        return 0
    fi
    mkdir -p "$dir"
    ln -sf "$work/data/pairs.jsonl" "$dir/pair.jsonl"
    ln -sf "$work/data/text.jsonl" "$dir/text.jsonl"
    ln -sf "$work/data/image.jsonl" "$dir/image.jsonl"
    ln -sf "$work/data/eval_pairs.jsonl" "$dir/eval_id.jsonl"
    ln -sf "$work/data/eval_unseen.jsonl" "$dir/eval.jsonl"
    local start=$SECONDS
    "$PY" "$REFERENCE" "$dir" --steps "$STEPS" --batch $((BATCH / 2)) --seed "$seed" --threads 2 2>/dev/null | tail -n 1 >"$dir/out-$seed.json"
    python3 - "$seed" "$STEPS" "$((SECONDS - start))" "$dir/out-$seed.json" <<'PY' | tee -a "$OUT/results.jsonl"
import json, sys
seed, steps, train_s, f = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
r = json.load(open(f))
print(json.dumps({"row": "p", "seed": seed, "steps": steps, "train_s": train_s,
                  "seen": r["eval_id"], "unseen": r["eval"]}))
PY
}

for seed in $SEEDS; do
    for row in $ROWS; do
        say "row $row, seed $seed: $STEPS steps"
        if [[ $row == p ]]; then run_reference "$seed"; else run_daemon "$row" "$seed"; fi
    done
done

python3 - "$OUT/results.jsonl" "$STEPS" "$BATCH" <<'PY' | tee "$OUT/table.md"
import json, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["steps"] == int(sys.argv[2]):
        rows[r["row"]].append(r)
names = {"a": "pairs only", "b": "+ single-modal", "c": "+ hard negatives", "d": "+ retrieved positives (all objectives)",
         "r": "reference's objectives (MLM+MRM+CMCL)", "e": "defaults without ITM",
         "s": "d without ITM and text seq2seq (objective defaults)", "o": "s + 6 salient object boxes (defaults)", "p": "PyTorch reference"}
print(f"| row | seeds | i2t R@1 seen | i2t R@5 seen | t2i R@5 seen | i2t R@1 unseen | i2t R@5 unseen | t2i R@5 unseen | train s |")
print("|---|---|---|---|---|---|---|---|---|")
for key in "abcdersop":
    rs = rows.get(key)
    if not rs:
        continue
    def cell(split, d, k):
        v = [r[split][d][k] for r in rs]
        return f"{sum(v) / len(v):.3f} ({', '.join(f'{x:.2f}' for x in v)})"
    print(f"| {key}: {names[key]} | {len(rs)} | {cell('seen', 'i2t', 'r1')} | {cell('seen', 'i2t', 'r5')} | {cell('seen', 't2i', 'r5')} | "
          f"{cell('unseen', 'i2t', 'r1')} | {cell('unseen', 'i2t', 'r5')} | {cell('unseen', 't2i', 'r5')} | "
          f"{sum(r['train_s'] for r in rs) // len(rs)} |")
# Captions of the seen held-out images (rows in LEARN_CAPTION_ROWS): how often the words name
# what was drawn, against chance (ops/caption_words.py), and the corpus scores.
captioned = [(k, [r for r in rows.get(k, []) if r.get("captions")]) for k in "abcdersop"]
captioned = [(k, rs) for k, rs in captioned if rs]
if captioned:
    print()
    print("| row | seeds | colour precision (chance) | shape precision (chance) | colour+shape precision (chance) | BLEU-4 | CIDEr-D |")
    print("|---|---|---|---|---|---|---|")
    for key, rs in captioned:
        def mean(f):
            return sum(f(r) for r in rs) / len(rs)
        def word(kind):
            return (f"{mean(lambda r: r['captions']['words']['model'][kind]):.3f} "
                    f"({mean(lambda r: r['captions']['words']['chance'][kind]):.3f})")
        print(f"| {key}: {names[key]} | {len(rs)} | {word('colour_p')} | {word('shape_p')} | {word('object_p')} | "
              f"{mean(lambda r: r['captions']['bleu4']):.3f} | {mean(lambda r: r['captions']['cider']):.3f} |")
PY
