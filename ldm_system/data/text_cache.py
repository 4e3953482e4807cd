"""Cached text embeddings: each caption's frozen text-encoder states, stored once next to its latent.

A text-conditioned stage 2 otherwise runs the frozen CLIP text model on every caption at every step,
although the states of a caption never change. `ldm data encode --text-encoder PATH` stores them:

  <key>.text.npy     float16 (L, D): the last hidden states of the caption as stored (L = max_length)
  null_text.npy      float16 (1, L, D) in the latent folder: the empty caption's states, which are the
                     null condition of condition dropout and guidance
  manifest meta["text_encoder"] = {"source", "weights_sha256", "max_length", "hidden_size"}

The identity is the sha256 of the encoder's weight files (not its path), so a copied folder is the
same encoder and a retrained one is not; `check_text_encoder` refuses shards cached with another one.
fp16 halves the bytes; CLIP states are O(1)-O(10) in magnitude, well inside fp16's range.

Tag shuffling (`data.shuffle_tags`) changes the caption each epoch and so cannot use a cache; the
stream hands out the cached states of the caption as stored (`batch.text`).

Stage 2 (`training_null_text`): a text model on shards with a cache conditions every step on
`batch.text` (condition dropout swaps in the cached null states) and never runs the encoder, which
stays on the CPU for previews; export copies it from `text.path`. With `data.shuffle_tags` the
cache is ignored (the shuffled caption has no cached states) and the encoder runs per step.
"""
from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm_system.data.manifest import Manifest

logger = logging.getLogger(__name__)
TEXT_ENTRY = "text.npy"
NULL_TEXT_FILE = "null_text.npy"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weights_sha256(path: str | Path) -> str:
    """sha256 over the text model's weight files (names and bytes, sorted), its identity."""
    from ldm_system.models.text import locate

    model_dir, _ = locate(path)
    files = sorted(p for p in model_dir.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{model_dir}: no weight files ({', '.join(_WEIGHT_SUFFIXES)})")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def npy16(states: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, states.detach().cpu().to(torch.float16).numpy(), allow_pickle=False)
    return buf.getvalue()


class TextCache:
    """The frozen encoder that fills the cache, and what the manifest records about it."""

    def __init__(self, path: str | Path, max_length: int = 77, device: str = "cpu") -> None:
        from ldm_system.models.text import TextEncoder

        self.encoder = TextEncoder.from_pretrained(path, max_length).to(device)
        self.identity: dict[str, Any] = {**self.encoder.describe(), "weights_sha256": weights_sha256(path)}

    def entries(self, captions: list[str]) -> list[bytes]:
        states = self.encoder.encode(captions)  # (B, L, D)
        return [npy16(s) for s in states]

    def write_null(self, out_dir: Path) -> None:
        (Path(out_dir) / NULL_TEXT_FILE).write_bytes(npy16(self.encoder.null()))


def check_text_encoder(manifest: Manifest, path: str | Path, folder: str | Path) -> None:
    """Refuse latent shards whose cached states came from another text encoder than `path`."""
    cached = manifest.meta.get("text_encoder")
    if cached is None:
        raise ValueError(f"{folder}: no cached text embeddings; encode with `ldm data encode --text-encoder PATH`")
    digest = weights_sha256(path)
    if digest != cached["weights_sha256"]:
        raise ValueError(f"{folder}: text embeddings were cached with another text encoder ({cached['source']}, "
                         f"weights sha256 {cached['weights_sha256'][:12]}), not {path} ({digest[:12]}); "
                         "re-encode with this one")


def load_null_text(folder: str | Path) -> torch.Tensor:
    """The cached empty caption's states (1, L, D), float32."""
    arr = np.load(Path(folder) / NULL_TEXT_FILE, allow_pickle=False)
    return torch.from_numpy(arr.astype(np.float32))


def training_null_text(folder: str | Path, manifest: Manifest, encoder_path: str | Path, max_length: int,
                       shuffle_tags: bool = False) -> torch.Tensor | None:
    """The cached null states (1, L, D) when stage 2 trains from the shards' cached states; None when
    it encodes online (no cache, or tag shuffling). Refuses a cache from another encoder or length."""
    cached = manifest.meta.get("text_encoder")
    if cached is None:
        return None
    if shuffle_tags:
        logger.warning("%s: data.shuffle_tags changes captions, so their cached text states are not used; "
                       "the text encoder runs every step", folder)
        return None
    check_text_encoder(manifest, encoder_path, folder)
    if int(cached["max_length"]) != max_length:
        raise ValueError(f"{folder}: text states were cached with max_length {cached['max_length']}, but "
                         f"text.max_length={max_length}; set text.max_length={cached['max_length']} or re-encode")
    return load_null_text(folder)
