"""Pairs files (``{"id", "caption", "image_base64"|"image_url", "regions"?}`` per line), read
the way ``unimod eval`` and ``unimod embed`` read them."""

from __future__ import annotations

import json
import sys
import urllib.request
from dataclasses import dataclass
from typing import List, Optional

from .objects import ObjectSequence, objects_from_record


@dataclass
class Pair:
    id: Optional[str]
    ids: List[int]
    objects: ObjectSequence


def fetch_url(url: str, max_bytes: int = 20_000_000, timeout: float = 10.0) -> bytes:
    if not (url.startswith("http://") or url.startswith("https://")):
        raise ValueError(f"image_url scheme of {url!r} is not http or https")
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (scheme checked above)
        data = r.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{url}: more than {max_bytes} bytes")
    return data


def read_pairs(path: str, twin, fetch=fetch_url) -> List[Pair]:
    """The usable pairs of ``path`` in file order; unusable lines are skipped with a warning
    on stderr (as ``unimod eval`` does)."""
    pairs: List[Pair] = []
    skipped = 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                caption = record.get("caption")
                if not isinstance(caption, str) or not caption.split():
                    raise ValueError("caption is missing or empty")
                rid = record.get("id")
                if rid is not None and not isinstance(rid, str):
                    rid = json.dumps(rid)
                objects = objects_from_record(record, twin.extractor, fetch)
                pairs.append(Pair(id=rid, ids=twin.tokenize(caption), objects=objects))
            except Exception as e:  # noqa: BLE001 (any bad line is skipped, like the daemon does)
                print(f"unimod_torch: line {n + 1} skipped: {e}", file=sys.stderr)
                skipped += 1
    if not pairs:
        raise SystemExit(f"unimod_torch: {path}: no usable pairs ({skipped} skipped)")
    if skipped:
        print(f"unimod_torch: warning: {skipped} pairs of {path} could not be used", file=sys.stderr)
    return pairs
