"""How linearly the built-in extractor's salient crops tell shapes apart, whatever the colour.

Draws single shapes (circle, square, upward triangle) in the synthetic stream's eight colours,
two sizes and random positions on its grey background (tests/harness/synth.rs), extracts the
first salient object's crop with the twin's extractor (python/unimod_torch/objects.py, bit for
bit the daemon's), and fits a linear softmax classifier shape <- crop on half the images,
scoring the other half. Two crops of the same object box are compared:

  backdrop  the extractor's crop: pixels that are not the object's count as BACKDROP (-128)
  image     the same box cut from the image itself (the crops before 2026-12-02: the grey
            background around the object)

A linear layer is what the model's visual embedding applies to a region feature first, so
this asks whether the first layer alone can read the shape, independently of training.

  ~/.cache/unimod/venv/bin/python bench/shape_separability.py [--images 1536] [--crop 8] [--seed 1]
"""

import argparse
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from unimod_torch import objects  # noqa: E402

COLOURS = {
    "red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 230, 40),
    "purple": (140, 40, 170), "orange": (250, 140, 20), "black": (10, 10, 10), "white": (250, 250, 250),
}
SHAPES = ["circle", "square", "triangle"]


def render(shape, rgb, cx, cy, r, px):
    ys, xs = torch.meshgrid(torch.arange(px), torch.arange(px), indexing="ij")
    fx, fy = (xs + 0.5) / px, (ys + 0.5) / px
    dx, dy = fx - cx, fy - cy
    if shape == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif shape == "square":
        inside = (dx.abs() <= r) & (dy.abs() <= r)
    else:
        inside = (dy >= -r) & (dy <= r) & (dx.abs() <= r * (dy + r) / (2 * r))
    img = torch.full((px, px, 3), 128, dtype=torch.uint8)
    img[inside] = torch.tensor(rgb, dtype=torch.uint8)
    return img


def crops(img, crop):
    """(backdrop crop, image crop) of the largest object, each 3*crop*crop."""
    ex = objects.ObjectExtractor([1], crop, 1)
    seq = ex.extract(img)
    assert seq.features.shape[0] == 3, "one object expected"
    masked = seq.features[2]
    # The same box cut from the image, with the extractor's cell bounds and normalisation.
    (x0, y0, x1, y1), = objects.salient_objects(img, 1)
    bw, bh = x1 - x0, y1 - y0
    plain = torch.empty(3, crop, crop)
    mean, std = torch.tensor(objects.PIXEL_MEAN), torch.tensor(objects.PIXEL_STD)
    for i in range(crop):
        ya = y0 + i * bh // crop
        yb = min(max(y0 + (i + 1) * bh // crop, ya + 1), y1)
        for j in range(crop):
            xa = x0 + j * bw // crop
            xb = min(max(x0 + (j + 1) * bw // crop, xa + 1), x1)
            cell = img[ya:yb, xa:xb].reshape(-1, 3).float().mean(0)
            plain[:, i, j] = (cell / 255.0 - mean) / std
    return masked, plain.reshape(-1)


def fit_and_score(x, y, train, test, steps=600):
    torch.manual_seed(0)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    xs = (x - mean) / std
    w = torch.zeros(x.shape[1], len(SHAPES), requires_grad=True)
    b = torch.zeros(len(SHAPES), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs[train] @ w + b, y[train]) + 1e-4 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (xs @ w + b).argmax(1)
    def acc(idx):
        return (pred[idx] == y[idx]).float().mean().item()

    return acc(train), acc(test), pred


def main():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1536)
    ap.add_argument("--crop", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(args.seed)
    names = list(COLOURS)
    feats = {"backdrop": [], "image": []}
    labels, colours = [], []
    for i in range(args.images):
        s = int(torch.randint(3, (1,), generator=g))
        c = int(torch.randint(len(names), (1,), generator=g))
        r = (0.1 if torch.rand(1, generator=g).item() < 0.5 else 0.2)
        cx = 0.5 + (torch.rand(1, generator=g).item() * 2 - 1) * (0.5 - r) * 0.8
        cy = 0.5 + (torch.rand(1, generator=g).item() * 2 - 1) * (0.5 - r) * 0.8
        m, p = crops(render(SHAPES[s], COLOURS[names[c]], cx, cy, r, args.size), args.crop)
        feats["backdrop"].append(m)
        feats["image"].append(p)
        labels.append(s)
        colours.append(c)
    y = torch.tensor(labels)
    col = torch.tensor(colours)
    idx = torch.randperm(args.images, generator=g)
    train, test = idx[: args.images // 2], idx[args.images // 2:]
    print(f"{args.images} single-shape images, {args.size} px, crop {args.crop}, seed {args.seed}; "
          f"linear softmax shape <- crop, half to fit, half to score (chance {1 / 3:.3f})")
    for kind in ("image", "backdrop"):
        x = torch.stack(feats[kind])
        tr, te, pred = fit_and_score(x, y, train, test)
        worst = []
        for c in range(len(names)):
            sel = test[col[test] == c]
            if len(sel):
                worst.append(((pred[sel] == y[sel]).float().mean().item(), names[c]))
        worst.sort()
        print(f"  {kind:8s}  fit {tr:.3f}  held-out {te:.3f}  worst colours: "
              + ", ".join(f"{n} {a:.2f}" for a, n in worst[:3]))


if __name__ == "__main__":
    main()
