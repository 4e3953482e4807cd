"""One raw tar sample -> (image tensor, label, caption), for image shards and latent shards alike.

Image samples (`png`, or `jpg`/`jpeg`/`webp`/`bmp` from other tools) are decoded, converted to the
configured channel count, resized and cropped to `image_size`, optionally flipped, and returned as
uint8 (C, H, W); the batch is mapped to float32 [-1, 1] in one operation when it is collated.

Latent samples carry `latent.npy`, a (C, h, w) float16/float32 array already multiplied by the
latent scale, and optionally `mean.npy` + `logvar.npy`, the KL posterior in the same scaled space
(mean * s and logvar + 2 log s). They are returned as float32 (C, h, w) unchanged: no [-1, 1]
mapping, no resizing; only the horizontal flip applies. With `sample_posterior`, a sample having
mean and logvar yields a fresh z = mean + exp(logvar / 2) * eps each epoch instead of `latent.npy`.

With `shuffle_tags`, a comma-separated caption has its tags after the first `keep_tags` shuffled
(captions.py).

All randomness (crop position, flip, eps, tag order) is drawn from an RNG seeded by (seed, epoch, key), so an
augmentation is the same whichever rank or worker reads the sample and however often it is replayed.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from ldm_system.data.captions import shuffle_tags
from ldm_system.data.rng import KeyedRandom
from ldm_system.data.sources.base import UNLABELLED
from ldm_system.data.text_cache import TEXT_ENTRY
from ldm_system.data.tario import RawSample
from ldm_system.data.transforms import (
    CHANNEL_MODES,
    CROP_MODES,
    decode_image,
    fit_image,
    hflip,
    to_uint8_tensor,
)

IMAGE_ENTRIES = ("png", "jpg", "jpeg", "webp", "bmp")
LATENT_ENTRY = "latent.npy"
MEAN_ENTRY = "mean.npy"
LOGVAR_ENTRY = "logvar.npy"
LABEL_ENTRY = "cls"
CAPTION_ENTRY = "txt"
PLACEMENT_ENTRY = "json"  # bucketed shards: where the image came from (see buckets.Placement)
FLIP_PROBABILITY = 0.5
_GRAY_MODES = ("L", "LA", "1", "I", "I;16", "F")
_LATENT_NDIM = 3  # (C, h, w)


class CorruptSample(Exception):
    """The sample's bytes cannot be turned into a training example."""


@dataclass(frozen=True)
class DecodeOptions:
    image_size: int | None = None
    crop: str = "center"
    flip: bool = False
    channels: int | None = None  # None: 1 for grayscale PNGs, 3 otherwise
    sample_posterior: bool = False
    seed: int = 0
    shuffle_tags: bool = False
    keep_tags: int = 0

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
        if self.channels is not None and self.channels not in CHANNEL_MODES:
            raise ValueError(f"channels must be one of {sorted(CHANNEL_MODES)} or None, got {self.channels!r}")


@dataclass(frozen=True)
class Decoded:
    image: torch.Tensor  # (C, H, W): uint8 pixels for images (see collate), float32 for latents
    label: int
    caption: str
    key: str
    placement: bytes = b""  # the sample's `json` entry as stored (bucketed shards), else empty
    text: torch.Tensor | None = None  # cached text-encoder states (L, D) float32, see text_cache.py


def decode_sample(raw: RawSample, opts: DecodeOptions, epoch: int) -> Decoded:
    """Raises CorruptSample when any entry is unusable."""
    label = _label(raw)
    caption = raw.entries.get(CAPTION_ENTRY, b"").decode("utf-8", "replace")
    if opts.shuffle_tags:
        # Its own keyed stream: turning tag shuffling on leaves crops and flips as they were.
        caption = shuffle_tags(caption, opts.keep_tags, KeyedRandom("tags", opts.seed, epoch, raw.key))
    if LATENT_ENTRY in raw.entries or MEAN_ENTRY in raw.entries:
        image = _latent(raw, opts, epoch)
    else:
        image = _image(raw, opts, epoch)
    text = None
    if TEXT_ENTRY in raw.entries:
        text = torch.from_numpy(_load_npy(raw, TEXT_ENTRY, ndim=2).astype(np.float32))
    return Decoded(image, label, caption, raw.key, raw.entries.get(PLACEMENT_ENTRY, b""), text)


def _label(raw: RawSample) -> int:
    text = raw.entries.get(LABEL_ENTRY)
    if text is None:
        return UNLABELLED
    try:
        return int(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise CorruptSample(f"{raw.key}: label {text[:20]!r} is not an integer") from None


def _image(raw: RawSample, opts: DecodeOptions, epoch: int) -> torch.Tensor:
    ext = next((e for e in IMAGE_ENTRIES if e in raw.entries), None)
    if ext is None:
        raise CorruptSample(f"{raw.key}: no image or latent entry (has {sorted(raw.entries)})")
    try:
        img = decode_image(raw.entries[ext])
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many exception types
        raise CorruptSample(f"{raw.key}.{ext}: {type(exc).__name__}: {exc}") from None
    channels = opts.channels or (1 if img.mode in _GRAY_MODES else 3)
    rng = KeyedRandom("augment", opts.seed, epoch, raw.key) if opts.crop == "random" or opts.flip else None
    img = fit_image(img, channels, opts.image_size, opts.crop, rng)
    if opts.flip and rng is not None and rng.random() < FLIP_PROBABILITY:
        img = hflip(img)
    return to_uint8_tensor(img)


def _load_npy(raw: RawSample, entry: str, ndim: int = _LATENT_NDIM) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(raw.entries[entry]), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - np.load raises ValueError/OSError/EOFError/...
        raise CorruptSample(f"{raw.key}.{entry}: {type(exc).__name__}: {exc}") from None
    if arr.ndim != ndim or not np.issubdtype(arr.dtype, np.floating):
        raise CorruptSample(f"{raw.key}.{entry}: expected a float {ndim}-d array, got {arr.dtype} {arr.shape}")
    return arr


def _latent(raw: RawSample, opts: DecodeOptions, epoch: int) -> torch.Tensor:
    rng = KeyedRandom("augment", opts.seed, epoch, raw.key)
    has_posterior = MEAN_ENTRY in raw.entries and LOGVAR_ENTRY in raw.entries
    if opts.sample_posterior and has_posterior:
        mean = _load_npy(raw, MEAN_ENTRY).astype(np.float32)
        logvar = _load_npy(raw, LOGVAR_ENTRY).astype(np.float32)
        if mean.shape != logvar.shape:
            raise CorruptSample(f"{raw.key}: mean {mean.shape} and logvar {logvar.shape} differ")
        eps = np.random.default_rng(rng.getrandbits(64)).standard_normal(mean.shape, dtype=np.float32)
        z = mean + np.exp(0.5 * logvar) * eps  # reparameterisation: z ~ N(mean, exp(logvar))
    elif LATENT_ENTRY in raw.entries:
        z = _load_npy(raw, LATENT_ENTRY).astype(np.float32)
    else:
        z = _load_npy(raw, MEAN_ENTRY).astype(np.float32)  # the posterior mode
    if opts.flip and rng.random() < FLIP_PROBABILITY:
        z = z[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(z))
