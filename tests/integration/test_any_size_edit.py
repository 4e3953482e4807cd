"""Invert, edit (SDEdit included) and interpolate at any size: a non-square image keeps its shape
instead of being cropped to the training square, through the Python API and `ldm invert/edit`, and a
side that is not a multiple of the model's pixel step is a one-line error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from ldm_system.cli import main


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 2:1 grayscale picture (a bright bar on the left third), and a 1:2 one."""
    folder = tmp_path_factory.mktemp("any-size")
    arr = np.full((40, 80), 30, dtype=np.uint8)
    arr[:, :26] = 220
    Image.fromarray(arr).save(folder / "wide.png")
    Image.fromarray(arr.T.copy()).save(folder / "tall.png")
    return folder / "wide.png", folder / "tall.png"


def test_api_inverts_and_edits_a_non_square_image_in_its_shape(serving_pipe, wide):
    x = serving_pipe.load_images([wide[0]])
    assert x.shape == (1, 1, 24, 48)  # 2:1 at about 32x32 pixels
    assert x[0, 0, :, :8].mean() > 0.5 and x[0, 0, :, -8:].mean() < -0.5  # the bar stayed on the left: no centre crop
    inv = serving_pipe.invert(x, classes=[0], steps=4)
    assert inv.x_T.shape == (1, 3, 6, 12) and inv.reconstruction.shape == x.shape
    assert inv.psnr[0] > 10
    again = serving_pipe.reconstruct(inv.x_T, classes=[0], steps=4)
    torch.testing.assert_close(again, inv.reconstruction, atol=1e-4, rtol=0)
    edited = serving_pipe.edit(x, source_class=0, target_class="Sandal", steps=4, keep_steps=1)
    assert edited.shape == x.shape and torch.isfinite(edited).all()
    sd = serving_pipe.sdedit(serving_pipe.load_images([wide[0]], height=16, width=64), strength=0.5, steps=4)
    assert sd.shape == (1, 1, 16, 64)
    with pytest.raises(ValueError, match=r"the two images must have one shape, got \(1, 1, 24, 48\) and \(1, 1, 48, 24\)"):
        serving_pipe.interpolate(x, serving_pipe.load_images([wide[1]]), num=2, steps=2)


def test_cli_edit_and_invert_keep_the_shape_or_take_height_and_width(serving_model_dir, wide, tmp_path, capsys):
    model = str(serving_model_dir)
    assert main(["edit", "--model", model, str(wide[0]), "--target-class", "Sandal", "--strength", "0.5",
                 "--steps", "4", "--height", "16", "--width", "64", "--out", str(tmp_path / "sd"), "--no-progress"]) == 0
    assert "resized (aspect kept) and centre-cropped to 64x16" in capsys.readouterr().err
    with Image.open(tmp_path / "sd" / "wide_edit.png") as im:
        assert im.size == (64, 16)
    assert main(["edit", "--model", model, str(wide[1]), "--source-class", "0", "--target-class", "1", "--steps", "4",
                 "--keep-steps", "1", "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    with Image.open(tmp_path / "e" / "tall_edit.png") as im:
        assert im.size == (24, 48)  # portrait kept
    assert main(["invert", "--model", model, str(wide[0]), "--steps", "4", "--out", str(tmp_path / "inv"),
                 "--no-progress"]) == 0
    with safe_open(str(tmp_path / "inv" / "x_T.safetensors"), "pt") as f:
        assert tuple(f.get_tensor("x_T").shape) == (1, 3, 6, 12)
    with Image.open(tmp_path / "inv" / "wide_recon.png") as im:
        assert im.size == (48, 24)


@pytest.mark.parametrize("argv, message", [
    (["--source-class", "0", "--height", "20"], "height 20 is not a multiple of 8 (the autoencoder's f=4 times the UNet's downsampling 2); try 16"),
    (["--width", "30", "--strength", "0.5"], "width 30 is not a multiple of 8"),
    (["--height", "0", "--strength", "0.5"], "--height must be positive, got 0"),
])
def test_cli_edit_refuses_a_side_off_the_pixel_step_in_one_line(serving_model_dir, wide, tmp_path, capsys, argv,
                                                                message):
    code = main(["edit", "--model", str(serving_model_dir), str(wide[0]), "--target-class", "1", *argv,
                 "--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("ldm ")]) == 1


def test_cli_images_of_two_shapes_need_one_size(serving_model_dir, wide, tmp_path, capsys):
    argv = ["invert", "--model", str(serving_model_dir), str(wide[0]), str(wide[1]), "--steps", "2",
            "--out", str(tmp_path / "inv"), "--no-progress"]
    assert main(argv) == 2
    assert "these differ (wide.png 48x24, tall.png 24x48); give one height and width" in capsys.readouterr().err
    assert main(argv + ["--height", "32", "--width", "32"]) == 0
