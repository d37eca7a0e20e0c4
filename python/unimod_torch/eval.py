"""``python -m unimod_torch.eval EXPORT_DIR --pairs FILE.jsonl --json``: image-to-text and
text-to-image recall@1/5/10 over the file, computed like ``unimod eval`` (UNIMO: cosine
similarity in the contrastive space; ViLBERT: its image-text matching head over every
combination), printed as the same JSON object."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List

import torch

from . import load
from .pairs import read_pairs


def recall(sim: torch.Tensor) -> Dict[str, float]:
    """Recall@1/5/10 of queries (rows) whose answer is the same index; ties count against
    the query (daemon/src/eval.rs)."""
    n = sim.shape[0]
    hits = [0, 0, 0]
    for q in range(n):
        own = sim[q, q]
        rank = int((sim[q] >= own).sum().item()) - 1
        for h, k in enumerate((1, 5, 10)):
            if rank < k:
                hits[h] += 1
    return {"r1": hits[0] / n, "r5": hits[1] / n, "r10": hits[2] / n}


def evaluate(twin, pairs) -> Dict:
    images = [(q.objects.features, q.objects.locations) for q in pairs]
    texts: List[List[int]] = [q.ids for q in pairs]
    if twin.config["arch"] == "vilbert":
        scores = twin.model.match_scores(images, texts)
        i2t, t2i = recall(scores), recall(scores.t())
    else:
        img = twin.model.image_vectors(images)
        txt = twin.model.text_vectors(texts)
        i2t, t2i = recall(img @ txt.t()), recall(txt @ img.t())
    meta = twin.checkpoint
    return {"checkpoint": meta.get("id"), "step": meta.get("step"), "pairs": len(pairs), "i2t": i2t, "t2i": t2i}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m unimod_torch.eval", description=__doc__)
    p.add_argument("export_dir")
    p.add_argument("--pairs", required=True)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    twin = load(args.export_dir)
    report = evaluate(twin, read_pairs(args.pairs, twin))
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"checkpoint {report['checkpoint']} (step {report['step']}), {report['pairs']} pairs\n"
            f"  image->text  R@1 {report['i2t']['r1']:.3f}  R@5 {report['i2t']['r5']:.3f}  R@10 {report['i2t']['r10']:.3f}\n"
            f"  text->image  R@1 {report['t2i']['r1']:.3f}  R@5 {report['t2i']['r5']:.3f}  R@10 {report['t2i']['r10']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
