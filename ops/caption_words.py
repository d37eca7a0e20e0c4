#!/usr/bin/env python3
"""How often generated captions of the synthetic stream name the right colours and shapes.

Reads `unimod caption --pairs FILE --json` output (one {"id", "caption", "reference"} per
line, then a {"images", "bleu4", "cider"} line) and reports, over the images:

- colour precision: of the colour words a caption names, the share that the reference names;
- shape precision: the same for shape words;
- object precision: of the "<colour> <shape>" phrases a caption names, the share that the
  reference names (the right colour on the right shape);
- the same recalls (of the reference's words, the share the caption names).

Chance is the same score for captions that ignore the image: each caption scored against the
references of the other images (every shift of the list, averaged), so it keeps the model's
own word frequencies.

Usage: ops/caption_words.py captions.jsonl [--json]
"""

import json
import sys

COLOURS = {"red", "green", "blue", "yellow", "purple", "orange", "black", "white"}
SHAPES = {"circle", "square", "triangle"}


def words(text):
    out = []
    for w in text.lower().replace(",", " ").replace(".", " ").split():
        out.append(w)
    return out


def features(text):
    ws = words(text)
    colours = {w for w in ws if w in COLOURS}
    shapes = {w for w in ws if w in SHAPES}
    objects = {(a, b) for a, b in zip(ws, ws[1:]) if a in COLOURS and b in SHAPES}
    return colours, shapes, objects


def share(named, truth):
    """(hits, total) of `named` found in `truth`."""
    return len(named & truth), len(named)


def scores(cands, refs):
    totals = {k: [0, 0] for k in ("colour_p", "shape_p", "object_p", "colour_r", "shape_r", "object_r")}
    for c, r in zip(cands, refs):
        for i, kind in enumerate(("colour", "shape", "object")):
            h, n = share(c[i], r[i])
            totals[kind + "_p"][0] += h
            totals[kind + "_p"][1] += n
            h, n = share(r[i], c[i])
            totals[kind + "_r"][0] += h
            totals[kind + "_r"][1] += n
    return {k: (h / n if n else 0.0) for k, (h, n) in totals.items()}


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    rows = []
    with open(sys.argv[1]) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            v = json.loads(line)
            if "caption" in v and "reference" in v:
                rows.append(v)
    if len(rows) < 2:
        sys.exit("need at least two captioned pairs")
    cands = [features(r["caption"]) for r in rows]
    refs = [features(r["reference"]) for r in rows]
    model = scores(cands, refs)
    n = len(rows)
    chance = {k: 0.0 for k in model}
    for shift in range(1, n):
        s = scores(cands, refs[shift:] + refs[:shift])
        for k in chance:
            chance[k] += s[k] / (n - 1)
    if "--json" in sys.argv:
        print(json.dumps({"images": n, "model": model, "chance": chance}))
        return
    print(f"{n} held-out images: words of the generated captions against their references")
    print(f"  {'':18} {'model':>7} {'chance':>7}")
    for k, label in [
        ("colour_p", "colour precision"),
        ("shape_p", "shape precision"),
        ("object_p", "colour+shape prec."),
        ("colour_r", "colour recall"),
        ("shape_r", "shape recall"),
        ("object_r", "colour+shape recall"),
    ]:
        print(f"  {label:18} {model[k]:7.3f} {chance[k]:7.3f}")


if __name__ == "__main__":
    main()
