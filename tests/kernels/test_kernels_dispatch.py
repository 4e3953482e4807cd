"""Backend selection, forcing and querying, SDPA fallbacks with one-time warnings, input errors."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import kernels
import kernels.autograd_fn as autograd_fn
from kernels import dispatch
from kernels.tiling import dkdv_tiles, dq_tiles, forward_tiles, padded_head_dim, with_override

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_backend(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    previous = kernels.set_backend(None)
    kernels.reset_fallback_warnings()
    yield
    kernels.set_backend(previous)
    kernels.reset_fallback_warnings()


@pytest.fixture
def triton_calls(monkeypatch):
    """Count calls into the Triton path (the dispatcher imports flash_attention lazily)."""
    calls = []
    real = autograd_fn.flash_attention

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(autograd_fn, "flash_attention", spy)
    return calls


def _qkv(n_q=12, n_k=9, d=16, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, n, d, generator=gen, dtype=dtype) for n in (n_q, n_k, n_k)]


def test_set_and_get_backend_round_trip():
    assert kernels.get_backend() == "auto"
    assert kernels.set_backend("sdpa") is None
    assert kernels.get_backend() == "sdpa"
    assert kernels.set_backend("TRITON") == "sdpa"  # case-insensitive, returns the previous value
    assert kernels.get_backend() == "triton"
    kernels.set_backend(None)
    assert kernels.get_backend() == "auto"
    with pytest.raises(ValueError, match="unknown attention backend 'cuda'"):
        kernels.set_backend("cuda")


def test_env_var_selects_backend_and_set_backend_wins(monkeypatch):
    monkeypatch.setenv("LDM_ATTENTION_BACKEND", "sdpa")
    assert kernels.get_backend() == "sdpa"
    kernels.set_backend("triton")
    assert kernels.get_backend() == "triton"
    kernels.set_backend(None)
    monkeypatch.setenv("LDM_ATTENTION_BACKEND", "flash")
    with pytest.raises(ValueError, match="LDM_ATTENTION_BACKEND"):
        kernels.get_backend()


def test_auto_uses_triton_under_interpreter_and_sdpa_without(monkeypatch, triton_calls):
    q, k, v = _qkv()
    assert kernels.select_backend(q, k, v) == ("triton", None)
    out = kernels.attention(q, k, v)
    assert len(triton_calls) == 1
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)

    monkeypatch.setattr(dispatch, "_interpreter_enabled", lambda: False)  # plain CPU: auto picks SDPA silently
    assert kernels.select_backend(q, k, v) == ("sdpa", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.attention(q, k, v)
    assert len(triton_calls) == 1


def test_forced_triton_on_unsupported_device_warns_once(monkeypatch, triton_calls):
    monkeypatch.setattr(dispatch, "_interpreter_enabled", lambda: False)
    kernels.set_backend("triton")
    q, k, v = _qkv()
    with pytest.warns(RuntimeWarning, match="without TRITON_INTERPRET"):
        out = kernels.attention(q, k, v, causal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second call: no new warning
        kernels.attention(q, k, v, causal=True)
    assert not triton_calls
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_forced_sdpa_skips_triton_and_per_call_backend_overrides(triton_calls):
    q, k, v = _qkv()
    kernels.set_backend("sdpa")
    kernels.attention(q, k, v)
    assert not triton_calls
    kernels.attention(q, k, v, backend="triton")  # per-call override beats the global setting
    assert len(triton_calls) == 1
    with pytest.raises(ValueError, match="unknown attention backend"):
        kernels.attention(q, k, v, backend="xformers")


@pytest.mark.parametrize(
    "case,match",
    [
        ("fp64", "dtype torch.float64"),
        ("big_head", "head dim > 256"),
        ("mask", "attention mask"),
        ("value_dim", "value head dim"),
    ],
)
def test_unsupported_inputs_fall_back_to_sdpa_with_one_warning(case, match, triton_calls):
    kernels.set_backend("triton")  # even when forced, unsupported inputs never reach the kernel
    mask = None
    if case == "fp64":
        q, k, v = _qkv(dtype=torch.float64)
    elif case == "big_head":
        q, k, v = _qkv(n_q=5, n_k=4, d=288)
    elif case == "mask":
        q, k, v = _qkv()
        mask = torch.rand(1, 2, 12, 9, generator=torch.Generator().manual_seed(1)) > 0.3
        mask[..., 0] = True  # keep every row non-empty
    else:
        q, k, _ = _qkv()
        v = torch.randn(1, 2, 9, 24)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    with pytest.warns(RuntimeWarning, match=match) as record:
        out = kernels.attention(*leaves, attn_mask=mask)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.attention(*leaves, attn_mask=mask)  # warned once only
    assert not triton_calls

    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_leaves, attn_mask=mask)
    torch.testing.assert_close(out, ref)
    grad_out = torch.randn_like(ref)
    for g, rg in zip(torch.autograd.grad(out, leaves, grad_out), torch.autograd.grad(ref, ref_leaves, grad_out)):
        torch.testing.assert_close(g, rg)


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"layout \(B, H, N, D\)"):
        kernels.attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="share a dtype"):
        kernels.attention(q, k.half(), v)
    with pytest.raises(ValueError, match="head dims differ"):
        kernels.attention(q, torch.randn(1, 2, 9, 8), v)
    with pytest.raises(ValueError, match="token counts differ"):
        kernels.attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="either causal=True or attn_mask"):
        kernels.attention(q, k, v, causal=True, attn_mask=torch.ones(12, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="finite"):
        kernels.attention(q, k, v, scale=float("nan"))
    with pytest.raises(ValueError, match="one device"):
        kernels.attention(q, k.to("meta"), v)
    with pytest.raises(TypeError, match="torch.Tensor"):
        kernels.attention(q.numpy(), k, v)


def test_tile_tables_are_valid_for_every_padded_head_dim():
    assert [padded_head_dim(d) for d in (1, 16, 17, 40, 64, 80, 160, 256)] == [16, 16, 32, 64, 64, 128, 256, 256]
    for block_d in (16, 32, 64, 128, 256):
        for table in (forward_tiles, dkdv_tiles, dq_tiles):
            for interpret in (False, True):
                t = table(block_d, interpret)
                for size in (t.block_m, t.block_n):
                    assert size >= 16 and size & (size - 1) == 0
    with pytest.raises(ValueError, match="power of two"):
        with_override(forward_tiles(64, True), 24, None)


def test_import_kernels_is_light():
    code = "import sys, kernels; print('triton' in sys.modules, 'diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_kernels_package_imports_no_other_project_package():
    for path in (REPO / "kernels").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in ("ldm_system", "autoencoders"), f"{path.name} imports {name}"
