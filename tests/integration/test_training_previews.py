"""Training previews: `preview.classes` / `preview.prompts` pick the labelled columns, the grid is a PNG
and a TensorBoard image, and a model trained on aspect-ratio buckets shows several bucket sizes."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ldm_fixtures import LDM_DEBUG, ROOT
from ldm_system.config import ConfigError, load_config
from ldm_system.config_ranges import CHECKS
from ldm_system.train.preview_grid import MIN_CELL, PAD
from ldm_system.train.runs import LDMRunConfig, run_ldm

TEXT_DEBUG = ROOT / "configs" / "ldm" / "fmnist-text-debug.yaml"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from ldm_system.data.pack import pack

    out = tmp_path_factory.mktemp("preview-data") / "images"
    pack("builtin:fashion-mnist", out, image_size=16, split="test", limit=16, shard_size=16)
    return out


def _cfg(config, images, out, *extra):
    """Pixel-space diffusion on 16 px Fashion-MNIST: 1 step, then the final preview."""
    return load_config(LDMRunConfig, config, [f"data.shards={images}", f"train.out_dir={out}", "unet.in_channels=1",
                                              "unet.sample_size=16", "data.batch_size=2", "train.steps=1",
                                              "train.checkpoint.every=0", "preview.steps=2", *extra], checks=CHECKS)


def _tensorboard_images(run):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={IMAGES: 0})
    acc.Reload()
    return {tag: acc.Images(tag) for tag in acc.Tags()["images"]}


def _label_strip(png: Image.Image, rows: int) -> np.ndarray:
    """The pixels below the image rows of a one-section grid: where the column labels are drawn."""
    cell = 16 * (MIN_CELL // 16)  # 16 px images are upscaled 3x
    return np.asarray(png.convert("L"))[PAD + rows * (cell + PAD):]


def test_class_preview_is_labelled_and_logged_to_tensorboard(images, tmp_path):
    out = tmp_path / "run"
    run_ldm(_cfg(LDM_DEBUG, images, out, "preview.classes=[Sneaker, 0, Bag]", "preview.num_images=6")).close()
    png = Image.open(out / "previews" / "preview_00000001.png")
    cell = 16 * (MIN_CELL // 16)
    assert png.size[0] == 3 * (cell + PAD) + PAD  # 3 columns: Sneaker, T-shirt/top, Bag
    assert png.size[1] > 2 * (cell + PAD) + PAD  # 6 // 3 = 2 rows, and the labels under them
    strip = _label_strip(png, rows=2)
    for j in range(3):  # dark text under every column, and each column's label is its own
        col = strip[:, PAD + j * (cell + PAD): (j + 1) * (cell + PAD)]
        assert (col < 128).sum() > 20, f"no label under column {j}"
    cols = [strip[:, PAD + j * (cell + PAD): (j + 1) * (cell + PAD)] for j in range(3)]
    assert not np.array_equal(cols[0], cols[2])
    logged = _tensorboard_images(out)
    assert list(logged) == ["preview"] and logged["preview"][-1].step == 1
    assert (logged["preview"][-1].width, logged["preview"][-1].height) == png.size


def test_text_preview_shows_the_configured_prompts(images, tmp_path):
    from ldm_system.models.text import save_random_text_encoder

    clip = save_random_text_encoder(tmp_path / "clip", hidden_size=32, max_length=16)
    out = tmp_path / "run"
    run_ldm(_cfg(TEXT_DEBUG, images, out, f"text.path={clip}", "preview.prompts=[a bag, a long coat with a hood]",
                 "preview.num_images=2")).close()
    png = Image.open(out / "previews" / "preview_00000001.png")
    cell = 16 * (MIN_CELL // 16)
    assert png.size[0] == 2 * (cell + PAD) + PAD  # one column per prompt
    strip = _label_strip(png, rows=1)
    assert (strip < 128).sum() > 40
    line_two = strip[strip.shape[0] // 2:, PAD + cell + PAD:]  # the long prompt wraps onto a second line
    assert (line_two < 128).sum() > 10
    assert "preview" in _tensorboard_images(out)


def test_a_model_trained_on_buckets_previews_several_bucket_sizes(tmp_path):
    from bucket_fixtures import build_bucket_latents
    from ldm_system.data.manifest import read_manifest

    build_bucket_latents(tmp_path)
    lat = read_manifest(tmp_path / "latents")
    out = tmp_path / "run"
    run_ldm(load_config(LDMRunConfig, LDM_DEBUG, [f"data.shards={tmp_path / 'latents'}", f"train.out_dir={out}",
                                                  "data.batch_size=2", "train.steps=1", "train.checkpoint.every=0",
                                                  "preview.steps=2", "preview.num_images=10"], checks=CHECKS)).close()
    png = np.asarray(Image.open(out / "previews" / "preview_00000001.png").convert("L"))
    widths = {b["width"] for b in lat.meta["buckets"]}
    assert len(widths) >= 3
    # three sections (widest, most populated, tallest), each 10 labelled columns of its own width:
    # the rows of images (mostly not white) have three different extents
    extents = {int(np.nonzero(row < 250)[0].max()) for row in png if (row < 250).sum() > 200}
    assert len(extents) >= 3
    assert png.shape[1] == max(extents) + 1 + PAD


def test_preview_keys_that_do_not_fit_the_model_are_refused(images, tmp_path):
    with pytest.raises(ConfigError, match=r"preview.prompts is set but unet.conditioning = 'class', not 'text'"):
        _cfg(LDM_DEBUG, images, tmp_path, "preview.prompts=[a bag]")
    with pytest.raises(ConfigError, match=r"preview.classes has class id 12; ids are 0..9"):
        _cfg(LDM_DEBUG, images, tmp_path, "preview.classes=[1, 12]")
    with pytest.raises(ConfigError, match=r"preview.classes is set but unet.conditioning = 'text'"):
        _cfg(TEXT_DEBUG, images, tmp_path, "preview.classes=[Bag]")
    with pytest.raises(ValueError, match=r"unknown class 'Boot'; known classes: T-shirt/top"):
        run_ldm(_cfg(LDM_DEBUG, images, tmp_path / "run", "preview.classes=[Boot]"))
