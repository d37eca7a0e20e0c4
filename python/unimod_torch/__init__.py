"""PyTorch twin of unimod: load a ``unimod checkpoint export`` directory and compute the same
embeddings as the daemon.

>>> from unimod_torch import load
>>> twin = load("export/")
>>> twin.embed_text(["a red circle"]).shape
"""

from __future__ import annotations

import json
import os
import warnings
from typing import List, Optional, Sequence, Union

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy is fine here

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from .model import UnimodModel  # noqa: E402
from .objects import ObjectExtractor, ObjectSequence, decode_image  # noqa: E402

__all__ = ["load", "Twin", "UnimodModel", "ObjectExtractor", "ObjectSequence", "build_model", "load_config"]

# Keys of config.json that are not part of the model configuration proper.
EXTRA_KEYS = ("model_type", "unimod_version", "architectures", "image", "text", "torch_dtype")


def load_config(export_dir: str) -> dict:
    with open(os.path.join(export_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def build_model(config: dict) -> UnimodModel:
    """The network of ``config.json`` with uninitialised weights."""
    return UnimodModel(config)


class Twin:
    """An exported checkpoint: model, tokenizer and region extractor."""

    def __init__(self, export_dir: str, device: Union[str, torch.device] = "cpu"):
        self.dir = export_dir
        self.config = load_config(export_dir)
        self.model = build_model(self.config)
        state = load_file(os.path.join(export_dir, "model.safetensors"))
        # Strict: a missing or an unexpected tensor is an error.
        self.model.load_state_dict(state, strict=True)
        self.model.to(device).eval()
        self.tokenizer = Tokenizer.from_file(os.path.join(export_dir, "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_length = max(3, int(self.config.get("text", {}).get("max_length", self.config["max_text_len"])))
        image = self.config.get("image", {})
        self.extractor = ObjectExtractor(
            image.get("box_scales", [1, 2, 3, 4, 6]), image.get("crop_size", 16), image.get("salient_boxes", 0)
        )
        checkpoint = os.path.join(export_dir, "checkpoint.json")
        self.checkpoint = json.load(open(checkpoint, encoding="utf-8")) if os.path.exists(checkpoint) else {}

    # ---- inputs ------------------------------------------------------------------------------

    def tokenize(self, text: str) -> List[int]:
        """``[CLS] w1 .. wn [SEP]`` of the whitespace-normalised text, truncated to
        ``text.max_length`` (ingest/src/text/tokenizer.rs)."""
        normalised = " ".join(text.split())
        body = self.tokenizer.encode(normalised, add_special_tokens=False).ids
        special = self.config["special"]
        return [special["cls"]] + body[: self.max_length - 2] + [special["sep"]]

    def objects(self, image: Union[bytes, torch.Tensor, ObjectSequence]) -> ObjectSequence:
        """Image bytes, an ``[H, W, 3]`` uint8 tensor or a ready object sequence."""
        if isinstance(image, ObjectSequence):
            return image
        if isinstance(image, (bytes, bytearray)):
            image = decode_image(bytes(image))
        return self.extractor.extract(image)

    # ---- embeddings ----------------------------------------------------------------------------

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised contrastive-space vectors, ``[len(texts), pooled]``."""
        return self.model.text_vectors([self.tokenize(t) for t in texts])

    def embed_image(self, images: Sequence[Union[bytes, torch.Tensor, ObjectSequence]]) -> torch.Tensor:
        """Normalised contrastive-space vectors, ``[len(images), pooled]``."""
        seqs = [self.objects(i) for i in images]
        return self.model.image_vectors([(s.features, s.locations) for s in seqs])

    def match_scores(self, images, texts: Sequence[str]) -> torch.Tensor:
        """Image-text matching logits ``[images, texts]`` (ViLBERT's retrieval)."""
        seqs = [self.objects(i) for i in images]
        return self.model.match_scores([(s.features, s.locations) for s in seqs], [self.tokenize(t) for t in texts])


def load(export_dir: str, device: Union[str, torch.device] = "cpu") -> Twin:
    """Loads an export directory (strictly)."""
    return Twin(export_dir, device)
