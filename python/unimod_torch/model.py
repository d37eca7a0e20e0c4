"""UNIMO and ViLBERT in PyTorch, module for module as in unimod's ``model`` crate, with the
parameter names of ``model.safetensors`` (see ``docs/export.md``)."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

BLOCKED = -1.0e9  # additive bias of a padding key (exp underflows to exactly 0)
POSITION_OFFSET = 2  # RoBERTa convention: position ids start at 2


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / (x.square().sum(dim=1, keepdim=True) + 1e-12).sqrt()


class SelfProjections(nn.Module):
    def __init__(self, d_query: int, d_kv: int, inner: int):
        super().__init__()
        self.query = nn.Linear(d_query, inner)
        self.key = nn.Linear(d_kv, inner)
        self.value = nn.Linear(d_kv, inner)


class Dense(nn.Module):
    """``dense`` (+ ``LayerNorm`` when ``norm`` is given)."""

    def __init__(self, d_in: int, d_out: int, norm: Optional[int] = None, eps: float = 1e-5):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if norm is not None:
            self.LayerNorm = nn.LayerNorm(norm, eps=eps)


class AttentionBlock(nn.Module):
    """Multi-head attention with its residual and LayerNorm (``attention.self.*``,
    ``attention.output.dense``, ``attention.output.LayerNorm``)."""

    def __init__(self, d_query: int, d_kv: int, inner: int, heads: int, eps: float, pre_ln: bool):
        super().__init__()
        self.self = SelfProjections(d_query, d_kv, inner)
        self.output = Dense(inner, d_query, norm=d_query, eps=eps)
        self.heads = heads
        self.head_dim = inner // heads
        self.pre_ln = pre_ln

    def attend(self, query: torch.Tensor, context: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, lq, _ = query.shape
        lk = context.shape[1]
        h, d = self.heads, self.head_dim
        q = self.self.query(query).reshape(b, lq, h, d).transpose(1, 2)
        k = self.self.key(context).reshape(b, lk, h, d).transpose(1, 2)
        v = self.self.value(context).reshape(b, lk, h, d).transpose(1, 2)
        scores = q.matmul(k.transpose(2, 3)) * (1.0 / math.sqrt(d)) + bias
        weights = torch.softmax(scores, dim=3)
        ctx = weights.matmul(v).transpose(1, 2).reshape(b, lq, h * d)
        return self.output.dense(ctx)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor], bias: torch.Tensor) -> torch.Tensor:
        norm = self.output.LayerNorm
        if self.pre_ln:
            normed = norm(x)
            ctx = normed if context is None else context
            return x + self.attend(normed, ctx, bias)
        ctx = x if context is None else context
        return norm(x + self.attend(x, ctx, bias))


def feed_forward(inner: Dense, outer: Dense, x: torch.Tensor, pre_ln: bool) -> torch.Tensor:
    norm = outer.LayerNorm
    if pre_ln:
        return x + outer.dense(F.gelu(inner.dense(norm(x))))
    return norm(x + outer.dense(F.gelu(inner.dense(x))))


class Layer(nn.Module):
    """One Transformer layer in BERT naming."""

    def __init__(self, hidden: int, heads: int, ffn: int, eps: float, pre_ln: bool):
        super().__init__()
        self.attention = AttentionBlock(hidden, hidden, hidden, heads, eps, pre_ln)
        self.intermediate = Dense(hidden, ffn)
        self.output = Dense(ffn, hidden, norm=hidden, eps=eps)
        self.pre_ln = pre_ln

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return feed_forward(self.intermediate, self.output, self.attention(x, None, bias), self.pre_ln)


class CoLayer(nn.Module):
    """ViLBERT co-attention block: each stream's queries attend to the other stream."""

    def __init__(self, text: Tuple[int, int, int], visual: Tuple[int, int, int], eps: float, pre_ln: bool):
        super().__init__()
        (th, _, tf), (vh, vheads, vf) = text, visual
        self.text_attention = AttentionBlock(th, vh, vh, vheads, eps, pre_ln)
        self.visual_attention = AttentionBlock(vh, th, vh, vheads, eps, pre_ln)
        self.text_intermediate = Dense(th, tf)
        self.text_output = Dense(tf, th, norm=th, eps=eps)
        self.visual_intermediate = Dense(vh, vf)
        self.visual_output = Dense(vf, vh, norm=vh, eps=eps)
        self.pre_ln = pre_ln

    def forward(self, text, visual, visual_keys, text_keys):
        t = self.text_attention(text, visual, visual_keys)
        v = self.visual_attention(visual, text, text_keys)
        t = feed_forward(self.text_intermediate, self.text_output, t, self.pre_ln)
        v = feed_forward(self.visual_intermediate, self.visual_output, v, self.pre_ln)
        return t, v


class TextEmbeddings(nn.Module):
    def __init__(self, vocab: int, max_len: int, hidden: int, eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_len + POSITION_OFFSET, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        pos = self.position_embeddings.weight[POSITION_OFFSET : POSITION_OFFSET + t][None]
        return self.LayerNorm(self.word_embeddings(ids) + pos)


class VisualEmbeddings(nn.Module):
    def __init__(self, feature_dim: int, hidden: int, eps: float):
        super().__init__()
        self.feature_embeddings = nn.Linear(feature_dim, hidden)
        self.location_embeddings = nn.Linear(5, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, features: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.feature_embeddings(features) + self.location_embeddings(locations))


class Encoder(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        eps, pre_ln = config["layer_norm_eps"], config["pre_ln"]
        h, heads, ffn = config["hidden"], config["heads"], config["ffn"]
        self.layer = nn.ModuleList(Layer(h, heads, ffn, eps, pre_ln) for _ in range(config["layers"]))
        v = config.get("vilbert")
        if v is not None:
            vdims = (v["visual_hidden"], v["visual_heads"], v["visual_ffn"])
            self.v_layer = nn.ModuleList(Layer(*vdims, eps, pre_ln) for _ in range(v["co_layers"]))
            self.c_layer = nn.ModuleList(CoLayer((h, heads, ffn), vdims, eps, pre_ln) for _ in range(v["co_layers"]))
        if pre_ln:
            self.final_layer_norm = nn.LayerNorm(h, eps=eps)
            if v is not None:
                self.final_v_layer_norm = nn.LayerNorm(v["visual_hidden"], eps=eps)


class Predictions(nn.Module):
    def __init__(self, hidden: int, vocab: int, eps: float):
        super().__init__()
        self.transform = Dense(hidden, hidden, norm=hidden, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab))


class Regions(nn.Module):
    def __init__(self, visual_hidden: int, feature_dim: int, classes: int):
        super().__init__()
        self.feature = Dense(visual_hidden, feature_dim)
        if classes > 0:
            self.classes = Dense(visual_hidden, classes)


class Heads(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.predictions = Predictions(config["hidden"], config["vocab_size"], config["layer_norm_eps"])
        self.regions = Regions(visual_hidden(config), config["feature_dim"], config.get("region_classes", 0))


class Matching(nn.Module):
    def __init__(self, hidden: int, vhidden: int, pooled: int):
        super().__init__()
        self.text_projection = nn.Linear(hidden, pooled)
        self.image_projection = nn.Linear(vhidden, pooled)
        self.classifier = nn.Linear(pooled, 1)


def visual_hidden(config: dict) -> int:
    v = config.get("vilbert")
    return v["visual_hidden"] if v is not None else config["hidden"]


def _padding_bias(lengths: Sequence[int], width: int) -> torch.Tensor:
    """Key-padding bias ``[rows, 1, 1, width]``."""
    bias = torch.full((len(lengths), width), BLOCKED, dtype=torch.float32)
    for r, n in enumerate(lengths):
        bias[r, :n] = 0.0
    return bias[:, None, None, :]


class UnimodModel(nn.Module):
    """The exported network (backbone and pretraining heads), in eval mode."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.arch = config["arch"]
        eps = config["layer_norm_eps"]
        h, vh = config["hidden"], visual_hidden(config)
        self.embeddings = TextEmbeddings(config["vocab_size"], config["max_text_len"], h, eps)
        self.visual_embeddings = VisualEmbeddings(config["feature_dim"], vh, eps)
        self.encoder = Encoder(config)
        self.cls = Heads(config)
        self.text_projection = nn.Linear(h, vh)
        self.image_projection = nn.Linear(vh, vh)
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.itm = Matching(h, vh, vh)
        self.eval()

    # ---- inputs as the daemon cleans them (model/src/plan.rs) ------------------------------

    def clean_text(self, ids: Sequence[int]) -> Optional[List[int]]:
        """Truncated to ``max_text_len`` (the last id, ``[SEP]``, kept), or None when unusable."""
        vocab, max_len = self.config["vocab_size"], self.config["max_text_len"]
        ids = list(ids)
        if not ids or any(i < 0 or i >= vocab for i in ids):
            return None
        if len(ids) <= max_len:
            return ids
        return ids[: max_len - 1] + [ids[-1]]

    def clean_image(self, features: torch.Tensor, locations: torch.Tensor):
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] != self.config["feature_dim"]:
            return None
        n = min(features.shape[0], self.config["max_objects"])
        return features[:n].float(), locations[:n].float()

    # ---- encoders --------------------------------------------------------------------------

    def _text_batch(self, texts: Sequence[Sequence[int]]):
        width = max(len(t) for t in texts)
        ids = torch.full((len(texts), width), self.config["special"]["pad"], dtype=torch.long)
        for r, t in enumerate(texts):
            ids[r, : len(t)] = torch.tensor(t, dtype=torch.long)
        return ids, [len(t) for t in texts]

    def _image_batch(self, images):
        width = max(f.shape[0] for f, _ in images)
        feats = torch.zeros(len(images), width, self.config["feature_dim"])
        locs = torch.zeros(len(images), width, 5)
        for r, (f, l) in enumerate(images):
            feats[r, : f.shape[0]] = f
            locs[r, : l.shape[0]] = l
        return feats, locs, [f.shape[0] for f, _ in images]

    def _run_layers(self, layers, x, bias):
        for layer in layers:
            x = layer(x, bias)
        return x

    def encode_texts(self, texts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Final hidden states of ``[CLS]`` for text-only inputs, ``[k, hidden]``."""
        ids, lengths = self._text_batch(texts)
        x = self.embeddings(ids)
        bias = _padding_bias(lengths, ids.shape[1])
        x = self._run_layers(self.encoder.layer, x, bias)  # ViLBERT: every text layer, no co-attention
        if self.config["pre_ln"]:
            x = self.encoder.final_layer_norm(x)
        return x[:, 0]

    def encode_images(self, images) -> torch.Tensor:
        """Final hidden states of the global ``[IMG]`` row for image-only inputs."""
        feats, locs, lengths = self._image_batch(images)
        x = self.visual_embeddings(feats, locs)
        bias = _padding_bias(lengths, feats.shape[1])
        if self.arch == "unimo":
            x = self._run_layers(self.encoder.layer, x, bias)
            if self.config["pre_ln"]:
                x = self.encoder.final_layer_norm(x)
        else:
            x = self._run_layers(self.encoder.v_layer, x, bias)
            if self.config["pre_ln"]:
                x = self.encoder.final_v_layer_norm(x)
        return x[:, 0]

    def encode_pairs(self, images, texts) -> Tuple[torch.Tensor, torch.Tensor]:
        """``([CLS], [IMG])`` final states of joint image-text inputs."""
        ids, tlen = self._text_batch(texts)
        feats, locs, vlen = self._image_batch(images)
        t_emb = self.embeddings(ids)
        v_emb = self.visual_embeddings(feats, locs)
        n, t = feats.shape[1], ids.shape[1]
        if self.arch == "unimo":
            bias = torch.cat([_padding_bias(vlen, n), _padding_bias(tlen, t)], dim=3)
            x = self._run_layers(self.encoder.layer, torch.cat([v_emb, t_emb], dim=1), bias)
            if self.config["pre_ln"]:
                x = self.encoder.final_layer_norm(x)
            return x[:, n], x[:, 0]
        text_bias = _padding_bias(tlen, t)
        visual_keys = _padding_bias(vlen, n)
        solo = len(self.encoder.layer) - len(self.encoder.c_layer)
        x = self._run_layers(self.encoder.layer[:solo], t_emb, text_bias)
        v = v_emb
        for i, co in enumerate(self.encoder.c_layer):
            x = self.encoder.layer[solo + i](x, text_bias)
            v = self.encoder.v_layer[i](v, visual_keys)
            x, v = co(x, v, visual_keys, text_bias)
        if self.config["pre_ln"]:
            x = self.encoder.final_layer_norm(x)
            v = self.encoder.final_v_layer_norm(v)
        return x[:, 0], v[:, 0]

    # ---- what unimod computes ----------------------------------------------------------------

    @torch.no_grad()
    def text_vectors(self, texts: Sequence[Sequence[int]], chunk: int = 64) -> torch.Tensor:
        """Normalised contrastive-space vectors of token-id sequences (zero when unusable)."""
        out = torch.zeros(len(texts), visual_hidden(self.config))
        cleaned = [(i, self.clean_text(t)) for i, t in enumerate(texts)]
        usable = [(i, t) for i, t in cleaned if t is not None]
        for s in range(0, len(usable), chunk):
            part = usable[s : s + chunk]
            vec = l2_normalize(self.text_projection(self.encode_texts([t for _, t in part])))
            for (i, _), v in zip(part, vec):
                out[i] = v
        return out

    @torch.no_grad()
    def image_vectors(self, images, chunk: int = 64) -> torch.Tensor:
        """Normalised contrastive-space vectors of object sequences ``(features, locations)``."""
        out = torch.zeros(len(images), visual_hidden(self.config))
        cleaned = [(i, self.clean_image(f, l)) for i, (f, l) in enumerate(images)]
        usable = [(i, im) for i, im in cleaned if im is not None]
        for s in range(0, len(usable), chunk):
            part = usable[s : s + chunk]
            vec = l2_normalize(self.image_projection(self.encode_images([im for _, im in part])))
            for (i, _), v in zip(part, vec):
                out[i] = v
        return out

    @torch.no_grad()
    def match_scores(self, images, texts, chunk: int = 256) -> torch.Tensor:
        """Image-text matching logits of every combination, ``[images, texts]`` (-inf when
        either side is unusable)."""
        scores = torch.full((len(images), len(texts)), float("-inf"))
        ims = [self.clean_image(f, l) for f, l in images]
        txs = [self.clean_text(t) for t in texts]
        combos = [(i, j) for i, im in enumerate(ims) if im is not None for j, t in enumerate(txs) if t is not None]
        for s in range(0, len(combos), chunk):
            part = combos[s : s + chunk]
            cls, img = self.encode_pairs([ims[i] for i, _ in part], [txs[j] for _, j in part])
            t = F.relu(self.itm.text_projection(cls))
            v = F.relu(self.itm.image_projection(img))
            logits = self.itm.classifier(t * v)[:, 0]
            for (i, j), x in zip(part, logits):
                scores[i, j] = x
        return scores
