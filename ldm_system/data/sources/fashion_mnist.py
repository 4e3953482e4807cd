"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (IDX files, gzip-compressed).

The package installs `/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`:
60,000 training and 10,000 test images, 28x28 grayscale, 10 classes. Another folder holding the same
four files can be used through the LDM_FASHION_MNIST_DIR environment variable.

IDX format: 2 zero bytes, a type code (0x08 = unsigned byte), the number of dimensions n, then n
big-endian int32 sizes, then the values in C order.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ldm_system.data.manifest import SkippedFile
from ldm_system.data.sources.base import Item

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
DIR_ENV = "LDM_FASHION_MNIST_DIR"
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"
# (images, labels) per split, as named by the upstream release and the Debian package.
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SIDE = 28
_IDX_UBYTE = 0x08
_IDX_HEADER_BYTES = 4
_IDX_DIM_BYTES = 4


class DatasetNotInstalledError(FileNotFoundError):
    """A built-in dataset's files are missing; the message says how to install them."""


def data_dir(root: Path | None = None) -> Path:
    """The folder to read: `root` if given, else $LDM_FASHION_MNIST_DIR, else the Debian path."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(DIR_ENV, DEFAULT_DIR))


def read_idx(path: Path) -> np.ndarray:
    """Read one gzip IDX file of unsigned bytes into an array of its declared shape."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < _IDX_HEADER_BYTES or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    if raw[2] != _IDX_UBYTE:
        raise ValueError(f"{path}: IDX type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    start = _IDX_HEADER_BYTES + _IDX_DIM_BYTES * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[_IDX_HEADER_BYTES:start], dtype=">i4"))
    data = np.frombuffer(raw, dtype=np.uint8, offset=start)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header declares shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def load_fashion_mnist(split: str = "train", root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 28, 28) and labels uint8 (N,) of one split ("train" or "test")."""
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST split must be one of {sorted(FILES)}, got {split!r}")
    folder = data_dir(root)
    paths = [folder / name for name in FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetNotInstalledError(
            f"Fashion-MNIST files not found in {folder} (missing: {', '.join(missing)}). "
            f"Install them with `{INSTALL_HINT}`, or set {DIR_ENV} to a folder holding "
            f"the four IDX .gz files."
        )
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"{paths[0]}: expected (N, 28, 28) images, got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{paths[1]}: {labels.shape[0]} labels for {images.shape[0]} images")
    if labels.max(initial=0) >= len(CLASSES):
        raise ValueError(f"{paths[1]}: label {labels.max()} outside the {len(CLASSES)} classes")
    return images, labels


@dataclass
class FashionMNISTSource:
    """Fashion-MNIST as a pack source. Channels default to 1; channels=3 repeats the gray value.

    The caption of each item is its class name, so text-conditioned demos work out of the box.
    """

    split: str = "train"
    channels: int = 1
    root: Path | None = None

    def __post_init__(self) -> None:
        self.images, self.labels = load_fashion_mnist(self.split, self.root)
        self.name = f"builtin:fashion-mnist:{self.split}"
        self.classes = CLASSES
        self.listing_skipped: tuple[SkippedFile, ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def key(self, index: int) -> str:
        return f"fashion-mnist-{self.split}-{index:05d}"

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def load(self, index: int) -> Item:
        label = int(self.labels[index])
        return Item(Image.fromarray(self.images[index]), label, CLASSES[label])
