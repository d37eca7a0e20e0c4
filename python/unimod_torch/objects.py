"""Images to object sequences, as unimod's ingest makes them.

A port of ``ingest/src/image/objects.rs`` (the built-in region extractor: a pyramid of
``n x n`` grids, each box area-averaged to a ``crop x crop`` RGB patch of normalised pixels,
then up to ``salient_boxes`` tight boxes of the largest objects that stand out from the
border colour, plus the global row), of ``ingest/src/decode/regions.rs`` (precomputed detector regions) and
a dependency-free PNG decoder. The arithmetic follows the Rust code operation by operation
(integer box sums, then float32 in the same order), so the features are bit-identical for
PNG images. Other formats are decoded with Pillow when it is installed; JPEG decoders differ
by a pixel value here and there, so those features are close, not identical.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


@dataclass
class ObjectSequence:
    """Row 0 is the global ``[IMG]`` entry, rows 1.. the regions."""

    features: torch.Tensor  # [rows, dim] float32
    locations: torch.Tensor  # [rows, 5] float32


class ImageError(ValueError):
    """An image that cannot be decoded or used."""


# ---- PNG ------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> torch.Tensor:
    """An 8-bit PNG (grey, grey+alpha, RGB, RGBA or palette; not interlaced) as ``[H, W, 3]``
    uint8 RGB. Alpha is dropped, as ``image``'s ``into_rgb8`` does."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ImageError("not a PNG")
    pos = len(_PNG_SIGNATURE)
    width = height = depth = color = interlace = None
    palette = None
    idat = []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise ImageError("truncated PNG chunk")
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if width is None or not idat:
        raise ImageError("PNG without IHDR or IDAT")
    if depth != 8 or interlace != 0:
        raise ImageError(f"PNG with bit depth {depth} / interlace {interlace} is not supported here")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color)
    if channels is None:
        raise ImageError(f"PNG colour type {color} is not supported")
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    if len(raw) < height * (stride + 1):
        raise ImageError("truncated PNG data")
    out = bytearray(height * stride)
    prev = bytearray(stride)
    bpp = channels
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 0xFF
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                up_left = prev[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + _paeth(left, prev[i], up_left)) & 0xFF
        elif ftype != 0:
            raise ImageError(f"PNG filter type {ftype} is invalid")
        out[y * stride : (y + 1) * stride] = line
        prev = line
    pixels = torch.frombuffer(bytes(out), dtype=torch.uint8).reshape(height, width, channels)
    if color == 3:
        if palette is None:
            raise ImageError("palette PNG without PLTE")
        lut = torch.frombuffer(bytes(palette), dtype=torch.uint8).reshape(-1, 3)
        return lut[pixels[..., 0].long()]
    if channels in (1, 2):
        return pixels[..., :1].expand(height, width, 3).contiguous()
    return pixels[..., :3].contiguous()


def decode_image(data: bytes) -> torch.Tensor:
    """Image bytes as ``[H, W, 3]`` uint8 RGB: PNG built in, other formats through Pillow."""
    if data.startswith(_PNG_SIGNATURE):
        try:
            return decode_png(data)
        except ImageError:
            pass  # a PNG variant the built-in decoder does not read: try Pillow
    try:
        import io

        from PIL import Image  # optional
    except ImportError as e:
        raise ImageError("this image format needs Pillow (pip install pillow); PNG works without it") from e
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
        w, h = rgb.size
        return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).reshape(h, w, 3)


# ---- the built-in region extractor ------------------------------------------------------------


def _f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def box_reduce(rgb: torch.Tensor, factor: int) -> torch.Tensor:
    """Integer box-filter reduction (right and bottom remainders dropped, rounded mean)."""
    h, w, _ = rgb.shape
    oh, ow = h // factor, w // factor
    blocks = rgb[: oh * factor, : ow * factor].long().reshape(oh, factor, ow, factor, 3)
    sums = blocks.sum(dim=(1, 3))
    div = factor * factor
    return ((sums + div // 2) // div).to(torch.uint8)


# ---- salient objects (ingest/src/image/objects.rs) --------------------------------------------

FOREGROUND_DISTANCE = 60
JOIN_DISTANCE = 60
MIN_OBJECT_AREA_PER_MILLE = 1
SALIENT_MIN_SIDE = 128
# What a salient object's crop gives the pixels of its box that are not the object's, in 8-bit
# pixel units: half a full scale below black (ingest/src/image/objects.rs, BACKDROP).
BACKDROP = -128


def border_colour(rgb: torch.Tensor) -> list:
    """Per-channel upper median of the border pixels (an image of at least 3x3)."""
    h, w, _ = rgb.shape
    border = torch.cat([rgb[0], rgb[h - 1], rgb[1 : h - 1, 0], rgb[1 : h - 1, w - 1]]).long()
    values, _ = border.sort(dim=0)
    return values[border.shape[0] // 2].tolist()


def salient_objects(rgb: torch.Tensor, limit: int, with_labels: bool = False):
    """Up to ``limit`` boxes ``(x0, y0, x1, y1)`` of the largest objects, as the Rust code finds
    them: foreground = colour distance from the border colour above FOREGROUND_DISTANCE, 4-neighbours
    of one object within JOIN_DISTANCE, at least a thousandth of the image (and 4 pixels), largest
    first, ties in raster order of the first pixel. With ``with_labels``: ``(boxes, ids, labels)``,
    each box's object id and the ``[h, w]`` label map (-1 = background)."""
    h, w, _ = rgb.shape
    if limit == 0 or w < 3 or h < 3:
        return ([], [], None) if with_labels else []
    px = rgb.long()
    bg = torch.tensor(border_colour(rgb), dtype=torch.long)
    fg = ((px - bg).abs().sum(-1) > FOREGROUND_DISTANCE).flatten().tolist()
    join_right = ((px[:, 1:] - px[:, :-1]).abs().sum(-1) <= JOIN_DISTANCE).tolist()  # [h][w-1]
    join_down = ((px[1:] - px[:-1]).abs().sum(-1) <= JOIN_DISTANCE).tolist()  # [h-1][w]
    seen = [not f for f in fg]
    label = [-1] * (w * h)
    found = []
    for start in range(w * h):
        if seen[start]:
            continue
        seen[start] = True
        oid = len(found)
        stack = [start]
        count, x0, y0, x1, y1 = 0, w, h, 0, 0
        while stack:
            i = stack.pop()
            label[i] = oid
            y, x = divmod(i, w)
            count += 1
            x0, y0, x1, y1 = min(x0, x), min(y0, y), max(x1, x + 1), max(y1, y + 1)
            if x > 0 and not seen[i - 1] and join_right[y][x - 1]:
                seen[i - 1] = True
                stack.append(i - 1)
            if x + 1 < w and not seen[i + 1] and join_right[y][x]:
                seen[i + 1] = True
                stack.append(i + 1)
            if y > 0 and not seen[i - w] and join_down[y - 1][x]:
                seen[i - w] = True
                stack.append(i - w)
            if y + 1 < h and not seen[i + w] and join_down[y][x]:
                seen[i + w] = True
                stack.append(i + w)
        found.append((count, start, (x0, y0, x1, y1), oid))
    min_pixels = max(-(-(w * h * MIN_OBJECT_AREA_PER_MILLE) // 1000), 4)
    found = [f for f in found if f[0] >= min_pixels]
    found.sort(key=lambda f: (-f[0], f[1]))
    kept = found[:limit]
    if with_labels:
        return [f[2] for f in kept], [f[3] for f in kept], torch.tensor(label, dtype=torch.long).reshape(h, w)
    return [f[2] for f in kept]


class ObjectExtractor:
    """``image.box_scales``, ``image.crop_size`` and ``image.salient_boxes`` of the daemon's
    configuration (exports written before salient boxes existed have none: 0)."""

    def __init__(self, box_scales: Sequence[int], crop_size: int, salient_boxes: int = 0):
        self.scales = [int(s) for s in box_scales]
        self.crop = max(1, min(int(crop_size), 256))
        self.salient = max(0, min(int(salient_boxes), 64))

    @property
    def feature_dim(self) -> int:
        return 3 * self.crop * self.crop

    @property
    def max_rows(self) -> int:
        return 1 + sum(s * s for s in self.scales) + self.salient

    def extract(self, rgb: torch.Tensor) -> ObjectSequence:
        c = self.crop
        finest = max(self.scales) if self.scales else 1
        min_side = finest * c
        if self.salient > 0:
            min_side = max(min_side, SALIENT_MIN_SIDE)
        h, w, _ = rgb.shape
        factor = max(min(w // max(min_side, 1), h // max(min_side, 1)), 1)
        if factor >= 2:
            rgb = box_reduce(rgb, factor)
            h, w, _ = rgb.shape
        table = torch.zeros(h + 1, w + 1, 3, dtype=torch.int64)
        table[1:, 1:] = rgb.long().cumsum(0).cumsum(1)

        # Box and crop-cell bounds, in the Rust code's integer arithmetic.
        boxes = []
        locations = [torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float32)]
        for n in self.scales:
            inv = _f32(1.0) / _f32(float(n))
            for gy in range(n):
                for gx in range(n):
                    locations.append(
                        torch.stack(
                            [
                                _f32(float(gx)) * inv,
                                _f32(float(gy)) * inv,
                                _f32(float(gx + 1)) * inv,
                                _f32(float(gy + 1)) * inv,
                                inv * inv,
                            ]
                        )
                    )
                    x0 = gx * w // n
                    x1 = min(max((gx + 1) * w // n, x0 + 1), w)
                    y0 = gy * h // n
                    y1 = min(max((gy + 1) * h // n, y0 + 1), h)
                    boxes.append((x0, y0, x1, y1))
        wf, hf, area = _f32(float(w)), _f32(float(h)), _f32(float(w * h))
        pyramid_boxes = len(boxes)
        objects, object_ids, labels = salient_objects(rgb, self.salient, with_labels=True)
        for x0, y0, x1, y1 in objects:
            locations.append(
                torch.stack(
                    [
                        _f32(float(x0)) / wf,
                        _f32(float(y0)) / hf,
                        _f32(float(x1)) / wf,
                        _f32(float(y1)) / hf,
                        _f32(float((x1 - x0) * (y1 - y0))) / area,
                    ]
                )
            )
            boxes.append((x0, y0, x1, y1))
        xa, xb, ya, yb = [], [], [], []
        for x0, y0, x1, y1 in boxes:
            bw, bh = x1 - x0, y1 - y0
            cols = []
            for j in range(c):
                a = x0 + j * bw // c
                cols.append((a, min(max(x0 + (j + 1) * bw // c, a + 1), x1)))
            rows = []
            for i in range(c):
                a = y0 + i * bh // c
                rows.append((a, min(max(y0 + (i + 1) * bh // c, a + 1), y1)))
            for ra, rb in rows:
                for ca, cb in cols:
                    xa.append(ca)
                    xb.append(cb)
                    ya.append(ra)
                    yb.append(rb)
        xa_t, xb_t = torch.tensor(xa), torch.tensor(xb)
        ya_t, yb_t = torch.tensor(ya), torch.tensor(yb)
        sums = table[yb_t, xb_t] + table[ya_t, xa_t] - table[yb_t, xa_t] - table[ya_t, xb_t]  # [cells, 3]
        # A salient object's cells sum its own box with every pixel that is not the object's at
        # BACKDROP (a summed-area table per object, over its box).
        for k, ((x0, y0, x1, y1), oid) in enumerate(zip(objects, object_ids)):
            mine = labels[y0:y1, x0:x1] == oid
            masked = torch.where(mine[..., None], rgb[y0:y1, x0:x1].long(), torch.tensor(BACKDROP, dtype=torch.long))
            own = torch.zeros(y1 - y0 + 1, x1 - x0 + 1, 3, dtype=torch.int64)
            own[1:, 1:] = masked.cumsum(0).cumsum(1)
            cells = slice((pyramid_boxes + k) * c * c, (pyramid_boxes + k + 1) * c * c)
            oxa, oxb = xa_t[cells] - x0, xb_t[cells] - x0
            oya, oyb = ya_t[cells] - y0, yb_t[cells] - y0
            sums[cells] = own[oyb, oxb] + own[oya, oxa] - own[oyb, oxa] - own[oya, oxb]
        count = ((xb_t - xa_t) * (yb_t - ya_t)).to(torch.float32)
        inv_count = _f32(1.0) / count
        scale = torch.stack([_f32(1.0) / (_f32(255.0) * _f32(s)) for s in PIXEL_STD])
        bias = torch.stack([-_f32(m) / _f32(s) for m, s in zip(PIXEL_MEAN, PIXEL_STD)])
        values = sums.to(torch.float32) * inv_count[:, None] * scale[None, :] + bias[None, :]
        regions = len(boxes)
        # [boxes, c*c, 3] -> channel-major [boxes, 3, c*c].
        values = values.reshape(regions, c * c, 3).permute(0, 2, 1).reshape(regions, 3 * c * c)
        glob = torch.zeros(3 * c * c, dtype=torch.float32)
        for r in range(regions):
            glob = glob + values[r]
        glob = glob * (_f32(1.0) / _f32(float(max(regions, 1))))
        features = torch.cat([glob[None, :], values], dim=0).contiguous()
        return ObjectSequence(features=features, locations=torch.stack(locations))


# ---- precomputed detector regions -------------------------------------------------------------


def decode_base64(text: str) -> bytes:
    """Standard base64, padding optional, a ``data:...;base64,`` prefix allowed."""
    body = text
    if text.startswith("data:"):
        body = text[5:].split(",", 1)[1] if "," in text else text[5:]
    body = body.strip()
    return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)


def parse_regions(value: dict) -> ObjectSequence:
    """``"regions": {"image_w", "image_h", "boxes", "dim", "features_base64"}`` as ingest reads it."""
    w = _f32(float(value["image_w"]))
    h = _f32(float(value["image_h"]))
    dim = int(value["dim"])
    boxes = value["boxes"]
    if not boxes:
        raise ImageError("regions.boxes is empty")
    area = w * h
    locations = [torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float32)]
    for b in boxes:
        x1, y1, x2, y2 = (_f32(float(v)) for v in b)
        locations.append(torch.stack([x1 / w, y1 / h, x2 / w, y2 / h, (x2 - x1) * (y2 - y1) / area]))
    raw = decode_base64(value["features_base64"])
    n = len(boxes)
    if len(raw) != n * dim * 4:
        raise ImageError(f"regions.features_base64 has {len(raw)} bytes, expected {n * dim * 4}")
    feats = torch.tensor(struct.unpack(f"<{n * dim}f", raw), dtype=torch.float32).reshape(n, dim)
    if not bool(torch.isfinite(feats).all()):
        raise ImageError("regions.features_base64 holds a non-finite value")
    glob = torch.zeros(dim, dtype=torch.float32)
    for r in range(n):
        glob = glob + feats[r]
    glob = glob * (_f32(1.0) / _f32(float(n)))
    return ObjectSequence(features=torch.cat([glob[None, :], feats]), locations=torch.stack(locations))


def objects_from_record(record: dict, extractor: ObjectExtractor, fetch: Optional[callable] = None) -> ObjectSequence:
    """The object sequence of an image or pair message: ``regions`` when present, else the
    image (``image_base64``, or ``image_url`` through ``fetch``)."""
    if record.get("regions") is not None:
        return parse_regions(record["regions"])
    if record.get("image_base64") is not None:
        data = decode_base64(record["image_base64"])
    elif record.get("image_url") is not None:
        if fetch is None:
            raise ImageError("image_url given but fetching is off")
        data = fetch(record["image_url"])
    else:
        raise ImageError("neither image_url nor image_base64 is present")
    return extractor.extract(decode_image(data))


def _is_finite(x: float) -> bool:
    return not (math.isinf(x) or math.isnan(x))
