"""Session fixtures for the serving/pipeline integration tests: one small *trained* model, built once.

Set LDM_TEST_MODEL_DIR to a folder to keep the build between pytest runs (it is reused when its
marker file is present); by default it lives in pytest's session temp folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from serving_model import build_trained_model

HELD_OUT_START = 9000  # the model trains on the first 2000 test images; these it never saw


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """256 Fashion-MNIST test images at 32x32 in 4 shards, packed once: the baselines' training data
    (read only; a module that needs other data defines its own `shards`)."""
    from ldm_system.data.pack import pack

    out = tmp_path_factory.mktemp("fmnist") / "test"
    pack("builtin:fashion-mnist", out, image_size=32, split="test", limit=256, shard_size=64)
    return out


@pytest.fixture(scope="session")
def serving_model_dir(tmp_path_factory) -> Path:
    root = os.environ.get("LDM_TEST_MODEL_DIR")
    root = Path(root) if root else tmp_path_factory.mktemp("serving_model")
    return build_trained_model(root)


@pytest.fixture(scope="session")
def serving_pipe(serving_model_dir):
    from ldm_system.serving.pipeline import LDMPipeline

    return LDMPipeline.from_pretrained(serving_model_dir)


@pytest.fixture(scope="session")
def held_out_files(tmp_path_factory) -> tuple[list[Path], list[int]]:
    """Four held-out Fashion-MNIST images as 28x28 PNG files (the model takes 32x32: they go through
    the resize policy, exactly as the packer treated the training images), with their labels."""
    from PIL import Image

    from ldm_system.data.sources.fashion_mnist import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    folder = tmp_path_factory.mktemp("held_out")
    paths, ids = [], []
    for i in range(HELD_OUT_START, HELD_OUT_START + 4):
        p = folder / f"fmnist_{i}.png"
        Image.fromarray(images[i]).save(p)
        paths.append(p)
        ids.append(int(labels[i]))
    return paths, ids


@pytest.fixture(scope="session")
def held_out(serving_pipe, held_out_files) -> tuple[torch.Tensor, list[int]]:
    """The held-out images as the model sees them: (4, 1, 32, 32) in [-1, 1], and their labels."""
    paths, labels = held_out_files
    return serving_pipe.load_images(paths), labels
