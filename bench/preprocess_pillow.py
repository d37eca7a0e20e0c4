#!/usr/bin/env python3
"""Pillow + NumPy baseline for unimod's image preprocessing, one core.

The same steps as `cargo bench -p unimod-ingest --bench preprocess` (image_to_objects):
decode the image bytes, convert to RGB, cut the multi-scale box pyramid (scales 1, 2, 3, 4, 6
= 66 boxes), resample every box to 16x16 by area averaging (Pillow's BOX filter, one
crop-and-resize call per box), normalise with the ImageNet mean and std into a channel-major
float32 feature (768 values), and prepend the global row (mean of the regions): a (67, 768)
array plus (67, 5) locations.

Two variants are timed for JPEGs: `full` decodes at full size (what a straightforward Pillow
pipeline does); `draft` asks libjpeg-turbo for DCT-scaled decoding first (Image.draft), the
same trick the Rust side uses, with the same rule (largest reduction that keeps every box of
the finest scale at least 16 pixels per side).

Usage: pip install pillow numpy
       OMP_NUM_THREADS=1 python3 bench/preprocess_pillow.py [JPEG] [PNG]
Defaults are the files the Rust benchmark writes to target/ingest-bench/.
"""

import io
import os
import sys
import time

import numpy as np
from PIL import Image

SCALES = (1, 2, 3, 4, 6)
CROP = 16
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def objects(data: bytes, draft: bool):
    img = Image.open(io.BytesIO(data))
    if draft and img.format == "JPEG":
        need = max(SCALES) * CROP
        w, h = img.size
        scale = 1
        for s in (8, 4, 2):
            if -(-w // s) >= need and -(-h // s) >= need:
                scale = s
                break
        if scale > 1:
            img.draft("RGB", (-(-w // scale), -(-h // scale)))
    img = img.convert("RGB")
    w, h = img.size
    rows = []
    locs = [(0.0, 0.0, 1.0, 1.0, 1.0)]
    for n in SCALES:
        for gy in range(n):
            for gx in range(n):
                box = (gx * w // n, gy * h // n, (gx + 1) * w // n, (gy + 1) * h // n)
                crop = img.resize((CROP, CROP), Image.BOX, box=box)
                rows.append(np.asarray(crop))
                locs.append((gx / n, gy / n, (gx + 1) / n, (gy + 1) / n, 1.0 / (n * n)))
    pixels = np.stack(rows).astype(np.float32) * (1.0 / 255.0)  # (66, 16, 16, 3)
    feats = ((pixels - MEAN) / STD).transpose(0, 3, 1, 2).reshape(len(rows), -1)  # channel-major
    feats = np.concatenate([feats.mean(axis=0, keepdims=True), feats], axis=0)
    return feats, np.asarray(locs, dtype=np.float32)


def bench(name: str, data: bytes, draft: bool, seconds: float = 3.0):
    feats, locs = objects(data, draft)
    assert feats.shape == (67, 3 * CROP * CROP) and locs.shape == (67, 5), feats.shape
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        objects(data, draft)
        n += 1
    elapsed = time.perf_counter() - start
    print(f"{name:32s} {elapsed / n * 1e3:8.3f} ms/record  {n / elapsed:8.1f} records/s")


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "ingest-bench")
    jpeg_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "photo_640x480.jpg")
    png_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "small_128x96.png")
    with open(jpeg_path, "rb") as f:
        jpeg = f.read()
    with open(png_path, "rb") as f:
        png = f.read()
    print(f"Pillow {Image.__version__}, NumPy {np.__version__}; jpeg {len(jpeg)} bytes, png {len(png)} bytes")
    bench("jpeg_640x480 full decode", jpeg, draft=False)
    bench("jpeg_640x480 draft (DCT-scaled)", jpeg, draft=True)
    bench("png_128x96", png, draft=False)


if __name__ == "__main__":
    main()
