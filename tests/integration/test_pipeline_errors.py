"""The Python API rejects bad input with clear errors (the CLI and server tests cover their layers)."""
import pytest
import torch

from ldm_system.serving.pipeline import LDMPipeline


def test_missing_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an exported ldm-system model"):
        LDMPipeline.from_pretrained(tmp_path / "nope")


def test_unknown_class_names_the_known_ones(serving_pipe):
    with pytest.raises(ValueError, match=r"unknown class 'Hat'; known classes: T-shirt/top, Trouser"):
        serving_pipe.sample(1, classes=["Hat"], steps=2)
    with pytest.raises(ValueError, match=r"class ids are 0\.\.9"):
        serving_pipe.sample(1, classes=[10], steps=2)


@pytest.mark.parametrize("steps", [0, -3])
def test_non_positive_steps(serving_pipe, held_out, steps):
    with pytest.raises(ValueError, match="steps must be positive"):
        serving_pipe.sample(1, steps=steps)
    with pytest.raises(ValueError, match="steps must be positive"):
        serving_pipe.invert(held_out[0][:1], steps=steps)


def test_too_many_steps(serving_pipe):
    with pytest.raises(ValueError, match="exceeds num_train_timesteps=1000"):
        serving_pipe.sample(1, steps=1001)


def test_wrong_tensor_size_names_the_expected_shape_and_the_loader(serving_pipe):
    step = serving_pipe.pixel_step
    with pytest.raises(ValueError, match=rf"images must be \(B, 1, H, W\) with H and W multiples of {step}, got "
                                         r"\(1, 1, 28, 28\).*load_images"):
        serving_pipe.invert(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"images must be \(B, 1, H, W\)"):
        serving_pipe.edit(torch.zeros(1, 3, 32, 32), source_class=0, target_class=1)


def test_files_keep_their_aspect(serving_pipe, held_out_files, tmp_path):
    """Files of another size are resized to the shape of about the model's pixel count nearest their
    aspect (or the height and width asked for) and lose only a thin remainder; not rejected."""
    from PIL import Image

    wide = tmp_path / "wide.png"
    Image.new("L", (64, 40), 200).save(wide)
    x = serving_pipe.load_images([wide])
    assert x.shape == (1, 1, 24, 40)  # 5:3 at about 32x32 pixels, sides multiples of the pixel step 8
    assert torch.allclose(x, torch.full_like(x, 200 / 127.5 - 1), atol=1e-3)
    assert serving_pipe.load_images([held_out_files[0][0], wide], height=32, width=32).shape == (2, 1, 32, 32)
    assert serving_pipe.load_images([wide], height=16).shape == (1, 1, 16, 24)  # one side given: aspect kept
    with pytest.raises(ValueError, match=r"keep their shapes and these differ \(fmnist_9000.png 32x32, wide.png "
                                         r"40x24\); give one height and width"):
        serving_pipe.load_images([held_out_files[0][0], wide])
    with pytest.raises(ValueError, match="height 20 is not a multiple of 8"):
        serving_pipe.load_images([wide], height=20, width=32)


def test_missing_and_unreadable_files(serving_pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        serving_pipe.load_images([tmp_path / "missing.png"])
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        serving_pipe.load_images([bad])


def test_class_count_must_match_the_batch(serving_pipe):
    with pytest.raises(ValueError, match="got 2 classes for 3 images"):
        serving_pipe.sample(3, classes=[0, 1], steps=2)


def test_null_optimization_needs_guidance(serving_pipe, held_out):
    with pytest.raises(ValueError, match="null-condition inversion needs"):
        serving_pipe.invert(held_out[0][:1], classes=[0], steps=2, null_optimization=True)
    with pytest.raises(ValueError, match="null-condition inversion needs"):  # no class to guide towards
        serving_pipe.invert(held_out[0][:1], steps=2, guidance=3.0, null_optimization=True)


def test_prompts_on_a_class_model_and_edits_without_a_target(serving_pipe, held_out):
    x = held_out[0][:1]
    with pytest.raises(ValueError, match="this model is not text-conditional; pass classes, not prompts"):
        serving_pipe.invert(x, prompts=["a bag"], steps=2)
    with pytest.raises(ValueError, match="this model is not text-conditional; pass classes, not prompts"):
        serving_pipe.sdedit(x, strength=0.5, target_prompt="a bag", steps=2)
    with pytest.raises(ValueError, match="this model is not text-conditional; pass classes, not prompts"):
        serving_pipe.interpolate(x, x, num=2, steps=2, prompts="a bag")
    with pytest.raises(ValueError, match="this model is not text-conditional; edit with source_class/target_class"):
        serving_pipe.edit(x, source_prompt="a shoe", target_prompt="a bag", steps=2)
    with pytest.raises(ValueError, match="a class edit needs source_class and target_class"):
        serving_pipe.edit(x, source_class=0, steps=2)
    with pytest.raises(ValueError, match="not both"):
        serving_pipe.edit(x, 0, 1, steps=2, target_prompt="a bag")
    with pytest.raises(ValueError, match="null_embeddings only apply to .* guidance != 1"):
        serving_pipe.reconstruct(torch.zeros(1, 3, 8, 8), classes=[0], steps=2, null_embeddings=torch.zeros(2, 1, 8))
