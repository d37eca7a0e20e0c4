"""``python -m unimod_torch.embed EXPORT_DIR --pairs FILE.jsonl --json``: one line per pair,
``{"id", "text": [f], "image": [f]}`` (normalised contrastive-space vectors), the same lines
as ``unimod embed``."""

from __future__ import annotations

import argparse
import json
import sys

from . import load
from .pairs import read_pairs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m unimod_torch.embed", description=__doc__)
    p.add_argument("export_dir", help="a directory written by `unimod checkpoint export`")
    p.add_argument("--pairs", required=True, help="JSONL pairs file")
    p.add_argument("--json", action="store_true", help="JSON lines (the only output format)")
    args = p.parse_args(argv)
    twin = load(args.export_dir)
    pairs = read_pairs(args.pairs, twin)
    texts = twin.model.text_vectors([q.ids for q in pairs])
    images = twin.model.image_vectors([(q.objects.features, q.objects.locations) for q in pairs])
    out = sys.stdout
    for q, t, i in zip(pairs, texts.tolist(), images.tolist()):
        out.write(json.dumps({"id": q.id, "text": t, "image": i}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
