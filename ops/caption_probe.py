#!/usr/bin/env python3
"""Does a UNIMO export read colour, shape and size from the image when it captions?

Teacher-forced probe (issue 12): every held-out pair's reference caption is fed after its image
under the image-to-text mask the caption objective trains (image rows see only image rows,
caption token i sees the image and tokens 0..=i), and at each position whose next word is a
colour, a shape or a size word the model's logits are compared over that word class only
(8 colours, 3 shapes, 2 sizes): top-1 accuracy of the right word. The same is measured with
every image replaced by the next pair's image, so "mismatched" is what the language prior
alone gets; a model that reads a word class from the image scores well above it. Unlike
greedy captions, this separates what the model learned from what decoding does with it.

Usage (the twin's venv): ops/caption_probe.py EXPORT_DIR PAIRS.jsonl [--json]
EXPORT_DIR from `unimod checkpoint export`; PAIRS.jsonl in the pair-record format (the
quickstart's .quickstart/data/eval_pairs.jsonl).
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import unimod_torch  # noqa: E402
from unimod_torch.model import BLOCKED  # noqa: E402
from unimod_torch.pairs import read_pairs  # noqa: E402

CLASSES = {
    "colour": ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"],
    "shape": ["circle", "square", "triangle"],
    "size": ["small", "large"],
}


def word_ids(twin, words):
    """Token id of each word as it appears inside a caption (after a space); None when the
    tokenizer splits the word."""
    ids = {}
    for w in words:
        body = twin.tokenizer.encode(f"a {w}", add_special_tokens=False).ids
        alone = twin.tokenizer.encode("a", add_special_tokens=False).ids
        rest = body[len(alone):]
        ids[w] = rest[0] if len(rest) == 1 and body[: len(alone)] == alone else None
    return ids


@torch.no_grad()
def caption_logits(model, features, locations, ids):
    """Vocabulary logits of every caption position under the image-to-text mask."""
    n, t = features.shape[0], len(ids)
    v = model.visual_embeddings(features[None], locations[None])
    x = model.embeddings(torch.tensor([ids], dtype=torch.long))
    allowed = torch.zeros(n + t, n + t, dtype=torch.bool)
    allowed[:n, :n] = True
    allowed[n:, :n] = True
    allowed[n:, n:] = torch.ones(t, t, dtype=torch.bool).tril()
    bias = torch.zeros(n + t, n + t).masked_fill(~allowed, BLOCKED)[None, None]
    h = torch.cat([v, x], dim=1)
    for layer in model.encoder.layer:
        h = layer(h, bias)
    if model.config["pre_ln"]:
        h = model.encoder.final_layer_norm(h)
    p = model.cls.predictions.transform
    h = p.LayerNorm(F.gelu(p.dense(h[0, n:])))
    return h @ model.embeddings.word_embeddings.weight.T + model.cls.predictions.bias


def probe(twin, pairs, shift):
    model = twin.model
    classes = {k: word_ids(twin, ws) for k, ws in CLASSES.items()}
    hits = {k: [0, 0] for k in classes}
    for i, pair in enumerate(pairs):
        image = pairs[(i + shift) % len(pairs)].objects
        logits = caption_logits(model, image.features, image.locations, pair.ids)
        for pos in range(len(pair.ids) - 1):
            target = pair.ids[pos + 1]
            for kind, ids in classes.items():
                cands = [c for c in ids.values() if c is not None]
                if target in cands:
                    best = max(cands, key=lambda c: logits[pos, c].item())
                    hits[kind][0] += best == target
                    hits[kind][1] += 1
    return {k: (h / n if n else None, n) for k, (h, n) in hits.items()}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        raise SystemExit(__doc__)
    twin = unimod_torch.load(args[0])
    if twin.config["arch"] != "unimo":
        raise SystemExit("caption_probe: ViLBERT has no generation head (UNIMO exports only)")
    pairs = read_pairs(args[1], twin)
    matched, mismatched = probe(twin, pairs, 0), probe(twin, pairs, 1)
    out = {k: {"accuracy": matched[k][0], "mismatched": mismatched[k][0], "chance": 1 / len(CLASSES[k]),
               "positions": matched[k][1]} for k in CLASSES}
    out["images"] = len(pairs)
    if "--json" in sys.argv:
        print(json.dumps(out))
        return
    print(f"{len(pairs)} held-out pairs, teacher-forced, right word among its class:")
    for k in CLASSES:
        o = out[k]
        acc = "n/a" if o["accuracy"] is None else f"{o['accuracy']:.3f}"
        mis = "n/a" if o["mismatched"] is None else f"{o['mismatched']:.3f}"
        print(f"  {k:<7} {acc} (other images: {mis}, uniform: {o['chance']:.3f}; {o['positions']} positions)")


if __name__ == "__main__":
    main()
