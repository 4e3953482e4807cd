"""TritonAttnProcessor parity with diffusers' own processors, on single layers and tiny UNets.

Everything runs the Triton kernels under TRITON_INTERPRET=1 (fp32, so tolerances are tight).
"""
from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

import kernels
import kernels.autograd_fn as autograd_fn
from kernels.diffusers_processor import TritonAttnProcessor

ATOL = 2e-5  # fp32 kernels vs fp32 SDPA, through a few layers


@pytest.fixture(autouse=True)
def _auto_backend(monkeypatch):
    monkeypatch.delenv("LDM_ATTENTION_BACKEND", raising=False)
    previous = kernels.set_backend(None)
    kernels.reset_fallback_warnings()
    yield
    kernels.set_backend(previous)


@pytest.fixture
def triton_calls(monkeypatch):
    calls = []
    real = autograd_fn.flash_attention

    def spy(*args):
        q, k = args[0], args[1]
        calls.append((*q.shape, k.shape[2]))  # (B, heads, Nq, D, Nk)
        return real(*args)

    monkeypatch.setattr(autograd_fn, "flash_attention", spy)
    return calls


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


def _assert_same_run(ref_module, our_module, inputs: dict, atol=ATOL):
    """Same output and same parameter / input gradients for a random cotangent."""
    ref_inputs = {k: (v.clone().requires_grad_() if torch.is_tensor(v) and v.is_floating_point() else v)
                  for k, v in inputs.items()}
    our_inputs = {k: (v.clone().requires_grad_() if torch.is_tensor(v) and v.is_floating_point() else v)
                  for k, v in inputs.items()}
    ref_out = ref_module(**ref_inputs)
    our_out = our_module(**our_inputs)
    ref_out = getattr(ref_out, "sample", ref_out)
    our_out = getattr(our_out, "sample", our_out)
    torch.testing.assert_close(our_out, ref_out, atol=atol, rtol=1e-4)

    cotangent = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(7))
    (ref_out * cotangent).sum().backward()
    (our_out * cotangent).sum().backward()
    ref_grads, our_grads = _grads(ref_module), _grads(our_module)
    assert ref_grads.keys() == our_grads.keys() and ref_grads
    for name in ref_grads:
        torch.testing.assert_close(our_grads[name], ref_grads[name], atol=atol, rtol=1e-4, msg=name)
    for name, t in ref_inputs.items():
        if torch.is_tensor(t) and t.requires_grad:
            torch.testing.assert_close(our_inputs[name].grad, t.grad, atol=atol, rtol=1e-4, msg=name)


def _with_processor(module: torch.nn.Module, processor) -> torch.nn.Module:
    clone = copy.deepcopy(module)
    clone.set_processor(processor)
    return clone


def test_spatial_group_norm_residual_rescale_layer(triton_calls):
    """4-D input (B, C, H, W), spatial norm from temb, group norm, residual, output rescale."""
    layer = Attention(query_dim=96, heads=2, dim_head=48, norm_num_groups=8, spatial_norm_dim=6,
                      residual_connection=True, rescale_output_factor=2.0, bias=True)
    assert isinstance(layer.processor, AttnProcessor2_0)
    gen = torch.Generator().manual_seed(0)
    inputs = {"hidden_states": torch.randn(2, 96, 5, 7, generator=gen), "temb": torch.randn(2, 6, 3, 3, generator=gen)}
    _assert_same_run(layer, _with_processor(layer, TritonAttnProcessor()), inputs)
    assert triton_calls == [(2, 2, 35, 48, 35)]


def test_cross_attention_with_cross_norm_and_qk_norm(triton_calls):
    layer = Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=40,
                      cross_attention_norm="layer_norm", qk_norm="layer_norm")
    gen = torch.Generator().manual_seed(1)
    inputs = {"hidden_states": torch.randn(2, 45, 32, generator=gen),
              "encoder_hidden_states": torch.randn(2, 7, 24, generator=gen)}
    _assert_same_run(layer, _with_processor(layer, TritonAttnProcessor()), inputs)
    assert triton_calls == [(2, 2, 45, 40, 7)]


def test_scale_qk_false_matches_plain_attn_processor(triton_calls):
    """With scale_qk=False diffusers defaults to AttnProcessor, which uses attn.scale = 1."""
    layer = Attention(query_dim=16, heads=1, dim_head=16, scale_qk=False)
    assert isinstance(layer.processor, AttnProcessor)
    inputs = {"hidden_states": 0.3 * torch.randn(1, 20, 16, generator=torch.Generator().manual_seed(2))}
    _assert_same_run(layer, _with_processor(layer, TritonAttnProcessor()), inputs)
    assert len(triton_calls) == 1


def test_attention_mask_falls_back_to_sdpa_with_warning(triton_calls):
    layer = Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16)
    gen = torch.Generator().manual_seed(3)
    mask = torch.zeros(2, 1, 7)
    mask[0, 0, 5:] = -10000.0  # additive bias: the first sample ignores its last two tokens
    inputs = {"hidden_states": torch.randn(2, 10, 32, generator=gen),
              "encoder_hidden_states": torch.randn(2, 7, 24, generator=gen), "attention_mask": mask}
    with pytest.warns(RuntimeWarning, match="attention mask"):
        _assert_same_run(layer, _with_processor(layer, TritonAttnProcessor()), inputs)
    assert not triton_calls


def test_processor_backend_pin_and_validation(triton_calls):
    layer = Attention(query_dim=16, heads=2, dim_head=8)
    inputs = {"hidden_states": torch.randn(1, 9, 16)}
    _assert_same_run(layer, _with_processor(layer, TritonAttnProcessor(backend="sdpa")), inputs)
    assert not triton_calls
    with pytest.raises(ValueError, match="unknown attention backend"):
        TritonAttnProcessor(backend="flash")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        kernels.use_triton_attention("unet")


def tiny_unet2d(sample_size: int = 16) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(40, 80),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=40, norm_num_groups=8,
    )


def tiny_cond_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(40, 80),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=24, attention_head_dim=2, norm_num_groups=8,  # 2 heads of dim 40
    )


def test_unet2d_parity_output_and_parameter_grads(triton_calls):
    ref = tiny_unet2d()
    ours = copy.deepcopy(ref)
    assert kernels.use_triton_attention(ours) == 4  # down, mid, 2 x up
    gen = torch.Generator().manual_seed(0)
    inputs = {"sample": torch.randn(2, 3, 16, 16, generator=gen), "timestep": torch.tensor([3, 700])}
    _assert_same_run(ref, ours, inputs, atol=5e-5)
    assert triton_calls == [(2, 2, 64, 40, 64)] * 4  # 8x8 tokens, 2 heads of dim 40


def test_cond_unet_cross_attention_parity(triton_calls):
    ref = tiny_cond_unet()
    ours = copy.deepcopy(ref)
    assert kernels.use_triton_attention(ours) == 8  # (self + cross) x (down, mid, 2 x up)
    assert {type(p).__name__ for p in ours.attn_processors.values()} == {"TritonAttnProcessor"}
    gen = torch.Generator().manual_seed(1)
    inputs = {"sample": torch.randn(2, 4, 16, 16, generator=gen), "timestep": torch.tensor([10, 500]),
              "encoder_hidden_states": torch.randn(2, 7, 24, generator=gen)}
    _assert_same_run(ref, ours, inputs, atol=5e-5)
    # 4 self-attention calls (64 keys) and 4 cross-attention calls (7 text tokens) on 8x8 latents.
    assert sorted(triton_calls) == [(2, 2, 64, 40, 7)] * 4 + [(2, 2, 64, 40, 64)] * 4


def test_use_triton_attention_keeps_unknown_processors():
    class CustomProcessor(AttnProcessor2_0):
        pass

    unet = tiny_cond_unet()
    name = "mid_block.attentions.0.transformer_blocks.0.attn2.processor"
    processors = unet.attn_processors
    processors[name] = CustomProcessor()
    unet.set_attn_processor(processors)
    with pytest.warns(UserWarning, match="left 1 attention layers unchanged"):
        assert kernels.use_triton_attention(unet, backend="triton") == 7
    after = unet.attn_processors
    assert type(after[name]) is CustomProcessor
    assert all(p.backend == "triton" for key, p in after.items() if key != name)


def test_training_steps_reduce_loss_and_track_default_processor(triton_calls):
    """A few Adam steps on one batch: the loss falls, and follows the SDPA-processor run step by step.

    8x8 inputs (4x4 = 16 tokens in the attention blocks) keep the interpreter run short.
    """
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    target = torch.randn(2, 3, 8, 8, generator=gen)
    t = torch.tensor([100, 900])

    def train(unet: torch.nn.Module) -> list[float]:
        opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
        losses = []
        for _ in range(3):
            loss = torch.nn.functional.mse_loss(unet(x, t).sample, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    ref = tiny_unet2d(sample_size=8)
    ours = copy.deepcopy(ref)
    kernels.use_triton_attention(ours, backend="triton")
    ours_losses = train(ours)
    ref_losses = train(ref)
    assert ours_losses[-1] < 0.9 * ours_losses[0], ours_losses
    assert len(triton_calls) == 3 * 4  # 3 steps x 4 attention layers
    for a, b in zip(ours_losses, ref_losses):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (ours_losses, ref_losses)
