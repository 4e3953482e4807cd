"""The artifact layer: folder kinds, diffusers import (exact architecture, SD-1.x head counts, weight
formats) and its refusals, on tiny random folders built with diffusers' own classes."""
from __future__ import annotations

import json

import pytest
import torch

from autoencoders.weights import UnsafeWeightsError, read_weights, weight_file
from ldm_system.artifacts import Kind, UnknownArtifactError, detect


def _sd_unet(heads=2):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=heads, norm_num_groups=8)


def test_detect_names_every_kind_and_refuses_unknown_folders(tmp_path):
    for name, kind in (("ldm.json", Kind.EXPORT), ("baseline.json", Kind.BASELINE),
                       ("autoencoder.json", Kind.STAGE1), ("model_index.json", Kind.DIFFUSERS_PIPELINE)):
        (tmp_path / name.split(".")[0]).mkdir()
        (tmp_path / name.split(".")[0] / name).write_text("{}")
        assert detect(tmp_path / name.split(".")[0]) is kind
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    assert detect(tmp_path / "m") is Kind.DIFFUSERS_MODEL
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.pt").write_text("")
    with pytest.raises(UnknownArtifactError, match="looked for ldm.json .*model_index.json"):
        detect(tmp_path / "odd")


def test_sd1_head_count_is_kept_and_the_rebuilt_unet_computes_what_diffusers_computes(tmp_path):
    from diffusers import UNet2DConditionModel

    from ldm_system.artifacts.diffusers_unet import load_unet_folder
    from ldm_system.models.unet import Denoiser

    _sd_unet(heads=2).save_pretrained(str(tmp_path / "unet"))
    cfg, ours = load_unet_folder(tmp_path / "unet")
    assert cfg.num_attention_heads == (2, 2) and cfg.conditioning == "text"
    theirs = UNet2DConditionModel.from_pretrained(str(tmp_path / "unet")).eval()
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, 32)
    with torch.no_grad():
        a = Denoiser(cfg, ours).eval()(x, t, c)
        b = theirs(x, t, encoder_hidden_states=c).sample
    assert (a - b).abs().max().item() == 0.0
    # the per-head-width reading (what a YAML `attention_head_dim: 32` builds) is another function
    from dataclasses import replace

    from ldm_system.models.unet import build_unet
    other = build_unet(replace(cfg, num_attention_heads=(), attention_head_dim=32))
    other.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        assert (other.eval()(x, t, encoder_hidden_states=c).sample - b).abs().max().item() > 1e-4


def test_unrepresentable_unet_and_contradicting_yaml_are_refused(tmp_path):
    from autoencoders.diffusers_io import NotRepresentableError
    from ldm_system.artifacts.diffusers_unet import check_against_yaml, unet_config_from_diffusers
    from ldm_system.models.unet import UNetConfig

    raw = dict(_sd_unet().config, _class_name="UNet2DConditionModel")
    with pytest.raises(NotRepresentableError, match="time_embedding_type: folder 'fourier'"):
        unet_config_from_diffusers({**raw, "time_embedding_type": "fourier"}, "X")
    cfg = unet_config_from_diffusers(raw, "X")
    with pytest.raises(ValueError, match="unet.in_channels: the config says 3, SD has 4"):
        check_against_yaml(cfg, UNetConfig(in_channels=3, block_out_channels=(16, 32), norm_num_groups=8), "SD")


def test_weight_formats_fp16_variant_and_tensor_only_bin_load(tmp_path):
    from safetensors.torch import save_file

    sd = {"a": torch.randn(3, 2), "n": torch.tensor([1, 2])}
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
              str(tmp_path / "diffusion_pytorch_model.fp16.safetensors"))
    got = read_weights(weight_file(tmp_path))
    assert got["a"].dtype == torch.float32 and torch.allclose(got["a"], sd["a"], atol=1e-2)
    (tmp_path / "diffusion_pytorch_model.fp16.safetensors").unlink()
    torch.save(sd, tmp_path / "diffusion_pytorch_model.bin")
    assert torch.equal(read_weights(weight_file(tmp_path))["a"], sd["a"])


class _NotATensor:
    """An object a weights-only unpickler must refuse."""


def test_bin_that_needs_pickle_is_refused_with_the_reason(tmp_path):
    torch.save({"a": torch.zeros(1), "extra": _NotATensor()}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match="needs pickle beyond tensors"):
        read_weights(weight_file(tmp_path))


def test_no_weights_lists_the_names_tried(tmp_path):
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors.*fp16.bin"):
        weight_file(tmp_path)


def test_diffusers_autoencoders_load_as_stage1_with_their_scaling_factor(tmp_path):
    from diffusers import AutoencoderKL, VQModel

    from autoencoders.io import load_autoencoder

    torch.manual_seed(0)
    kl = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16), latent_channels=4,
                       down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                       norm_num_groups=8, layers_per_block=1, scaling_factor=0.5)
    kl.save_pretrained(str(tmp_path / "kl"))
    ae, meta = load_autoencoder(tmp_path / "kl")
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        assert meta.latent_scale == 0.5 and ae.cfg.f == 2
        assert torch.equal(ae.encode_latents(x), kl.encode(x).latent_dist.mode())
    vq = VQModel(in_channels=1, out_channels=1, block_out_channels=(8, 16), latent_channels=3, num_vq_embeddings=16,
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                 norm_num_groups=8, layers_per_block=1, scaling_factor=1.0)
    vq.save_pretrained(str(tmp_path / "vq"))
    ae, meta = load_autoencoder(tmp_path / "vq")
    with torch.no_grad():
        h = ae.encode_latents(x)
        assert (ae.decode(h) - vq.decode(h).sample).abs().max().item() < 1e-5
    cfg = json.loads((tmp_path / "vq" / "config.json").read_text())
    (tmp_path / "vq" / "config.json").write_text(json.dumps({**cfg, "norm_type": "spatial"}))
    with pytest.raises(ValueError, match="norm_type: folder 'spatial'"):
        load_autoencoder(tmp_path / "vq")
