"""Random square crops of the natural RGB photos bundled with scikit-image (`builtin:photos`).

scikit-image is an optional extra (`pip install "ldm-system[photos]"`). Its wheel ships a handful of
photos; the eight RGB ones below load without any download. Item i is fully determined by
(seed, i): pick a photo, a crop side in CROP_FRACTION of the photo's shorter side, a position, then
resize the crop to `image_size`. The label is the photo's index in PHOTO_NAMES (so the set also
works for class-conditional demos) and the caption is the photo's name.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ldm_system.data.manifest import SkippedFile
from ldm_system.data.sources.base import Item

INSTALL_HINT = 'pip install "ldm-system[photos]"  (or: pip install scikit-image)'
DEFAULT_NUM_SAMPLES = 2048
DEFAULT_IMAGE_SIZE = 64
# A crop covers 30%..100% of the shorter side: small enough for variety, large enough for content.
CROP_FRACTION = (0.3, 1.0)


def _photo_loaders() -> dict[str, Callable[[], np.ndarray]]:
    """name -> function returning a uint8 (H, W, 3) array. Imports scikit-image on first use."""
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError(f"builtin:photos needs scikit-image. Install it with: {INSTALL_HINT}") from exc
    return {
        "astronaut": data.astronaut,
        "chelsea": data.chelsea,
        "coffee": data.coffee,
        "hubble_deep_field": data.hubble_deep_field,
        "immunohistochemistry": data.immunohistochemistry,
        "retina": data.retina,
        "rocket": data.rocket,
        "stereo_motorcycle": lambda: data.stereo_motorcycle()[0],  # (left, right, disparity)
    }


PHOTO_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "stereo_motorcycle",
)


def load_photos() -> list[np.ndarray]:
    loaders = _photo_loaders()
    photos = []
    for name in PHOTO_NAMES:
        arr = np.asarray(loaders[name]())
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"skimage photo {name!r} is not uint8 RGB (shape {arr.shape}, {arr.dtype})")
        photos.append(arr)
    return photos


@dataclass
class PhotoCropSource:
    """`num_samples` random crops of size `image_size`, reproducible from `seed`."""

    num_samples: int = DEFAULT_NUM_SAMPLES
    image_size: int = DEFAULT_IMAGE_SIZE
    seed: int = 0
    channels: int = 3
    split: str = "train"

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.split != "train":
            raise ValueError(f"builtin:photos has only a 'train' split, got {self.split!r}")
        self.photos = load_photos()
        self.name = "builtin:photos"
        self.classes = PHOTO_NAMES
        self.listing_skipped: tuple[SkippedFile, ...] = ()

    def __len__(self) -> int:
        return self.num_samples

    def key(self, index: int) -> str:
        return f"photos-{self.seed}-{index:07d}"

    def describe(self, index: int) -> str:
        return f"{self.name}[seed={self.seed}, {index}]"

    def load(self, index: int) -> Item:
        rng = np.random.default_rng([self.seed, index])
        label = int(rng.integers(len(self.photos)))
        photo = self.photos[label]  # (H, W, 3)
        h, w = photo.shape[:2]
        side = max(1, int(rng.uniform(*CROP_FRACTION) * min(h, w)))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        crop = crop.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
        return Item(crop, label, PHOTO_NAMES[label].replace("_", " "))
