"""Image transport of the serving layer: the resize policy matches the training loader exactly, and
base64 decoding fails with clear messages."""
import base64
import io

import pytest
import torch
from PIL import Image

from ldm_system.images import load_image
from ldm_system.serving.image_io import (
    ImageDecodeError,
    ImageSizeError,
    b64_to_tensor,
    open_image_file,
    tensor_to_b64png,
)


def _photo(path, size, mode="RGB"):
    g = torch.Generator().manual_seed(0)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).convert(mode).save(path)
    return path


@pytest.mark.parametrize("size, channels", [((50, 40), 1), ((40, 64), 3), ((32, 32), 3), ((20, 20), 1)])
def test_file_and_base64_paths_match_load_image(tmp_path, size, channels):
    """The CLI, the server and `ldm_system.images.load_image` (the pipeline API) agree bit for bit."""
    p = _photo(tmp_path / "x.png", size)
    ref = load_image(p, 32, channels)
    loaded = open_image_file(p, 32, channels)
    assert torch.equal(loaded.tensor, ref)
    assert loaded.original_size == size and loaded.resized == (size != (32, 32))
    b64 = base64.b64encode(p.read_bytes()).decode()
    assert torch.equal(b64_to_tensor(b64, 32, channels, resize=True), ref)


def test_png_round_trip_is_exact_on_the_uint8_grid():
    x = torch.randint(0, 256, (2, 1, 8, 8)).float() / 127.5 - 1
    back = torch.cat([b64_to_tensor(s, 8, 1) for s in tensor_to_b64png(x)])
    assert torch.allclose(back, x, atol=1e-6)


def test_data_url_prefix_is_accepted():
    (s,) = tensor_to_b64png(torch.zeros(1, 3, 4, 4))
    assert b64_to_tensor("data:image/png;base64," + s, 4, 3).shape == (1, 3, 4, 4)


def test_decode_errors_are_specific():
    with pytest.raises(ImageDecodeError, match="img: not valid base64"):
        b64_to_tensor("@@@", 8, 1, name="img")
    with pytest.raises(ImageDecodeError, match="empty image"):
        b64_to_tensor("", 8, 1)
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        b64_to_tensor(base64.b64encode(b"GIF89a-not-really").decode(), 8, 1)
    buf = io.BytesIO()
    Image.new("L", (10, 6)).save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    with pytest.raises(ImageSizeError, match="is 10x6, the model takes 8x8"):
        b64_to_tensor(png, 8, 1)
    with pytest.raises(ImageDecodeError, match="exceeds the server limit of 9 pixels"):
        b64_to_tensor(png, 8, 1, resize=True, max_side=9)
    truncated = base64.b64encode(buf.getvalue()[:-30]).decode()
    with pytest.raises(ImageDecodeError, match="corrupt image data|not a decodable image"):
        b64_to_tensor(truncated, 10, 1, resize=True)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        open_image_file(tmp_path / "nope.png", 8, 1)
    (tmp_path / "t.png").write_text("text")
    with pytest.raises(ValueError, match="cannot read image"):
        open_image_file(tmp_path / "t.png", 8, 1)


@pytest.mark.parametrize("channels", [3, 1])
def test_packer_and_serving_prepare_the_same_pixels(tmp_path, channels):
    """An odd-sized RGBA picture with a half-transparent background: the packed shard, the CLI's file
    reader and the server's base64 reader all give the same pixels (alpha over white, Lanczos)."""
    from ldm_system.data.pack import pack
    from ldm_system.data.stream import first_images

    g = torch.Generator().manual_seed(1)
    rgba = (torch.rand(23, 37, 4, generator=g) * 255).to(torch.uint8).numpy()
    rgba[:, :18, 3] = 0  # a fully transparent left band (its hidden colour must not show)
    rgba[:, 18:26, 3] = 128
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(rgba, "RGBA").save(src / "x.png")
    pack(str(src), tmp_path / "shards", image_size=16, channels=channels)
    packed = first_images(str(tmp_path / "shards"), 1)

    served = open_image_file(src / "x.png", 16, channels)
    b64 = base64.b64encode((src / "x.png").read_bytes()).decode()
    assert served.original_size == (37, 23) and served.resized
    assert torch.equal(served.tensor, packed)
    assert torch.equal(b64_to_tensor(b64, 16, channels, resize=True), packed)
    assert torch.equal(load_image(src / "x.png", 16, channels), packed)
    assert packed[..., :, :2].min() == 1.0  # the transparent band came out white
