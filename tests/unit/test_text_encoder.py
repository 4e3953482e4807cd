"""The frozen CLIP text encoder (ldm_system/models/text.py): shapes, the empty caption, caption
dropout, the two folder layouts and the errors. Tiny *random* CLIP models only: nothing is downloaded."""
from __future__ import annotations

import json

import pytest
import torch

from ldm_system.models.text import (
    TextEncoder,
    TextEncoderConfig,
    check_cross_attention_dim,
    drop_captions,
    save_random_text_encoder,
)

CHARS = "abcdefghijklmnopqrstuvwxyz-/"


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """A hub-snapshot layout written by hand: config + weights + vocab.json/merges.txt in one folder."""
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = tmp_path_factory.mktemp("clip-hub")
    vocab = {c: i for i, c in enumerate(CHARS)}
    vocab.update({c + "</w>": len(CHARS) + i for i, c in enumerate(CHARS)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per character
    eos = vocab["<|endoftext|>"]
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=12, bos_token_id=eos - 1,
                         eos_token_id=eos, pad_token_id=eos)
    CLIPTextModel(cfg).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def enc(hub_folder) -> TextEncoder:
    return TextEncoder.from_pretrained(hub_folder, max_length=12)


def test_captions_encode_to_fixed_length_states(enc):
    states = enc.encode(["Sneaker", "Bag", "", "T-shirt/top"])
    assert states.shape == (4, 12, 24) and states.dtype == torch.float32
    assert not states.requires_grad
    assert not torch.allclose(states[0], states[1])  # different captions, different states
    torch.testing.assert_close(states[2:3], enc.null())  # the empty caption is the null condition
    assert enc.null().shape == (1, 12, 24)


def test_long_captions_are_truncated_and_case_does_not_matter(enc):
    long = "ankle boot " * 10
    assert enc.encode([long]).shape == (1, 12, 24)
    torch.testing.assert_close(enc.encode(["Sneaker"]), enc.encode(["sneaker"]))  # CLIP lower-cases


def test_encoder_is_frozen_and_fp32_under_autocast(enc):
    assert all(not p.requires_grad for p in enc.model.parameters()) and not enc.model.training
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert enc.encode(["Bag"]).dtype == torch.float32


def test_debug_encoder_round_trip_keeps_the_caller_rng(tmp_path):
    before = torch.get_rng_state()
    save_random_text_encoder(tmp_path / "clip", hidden_size=16, layers=1, max_length=8)
    assert torch.equal(before, torch.get_rng_state())  # its own seed: training RNG is untouched
    assert (tmp_path / "clip" / "text_encoder" / "config.json").exists()
    assert (tmp_path / "clip" / "tokenizer").is_dir()
    enc = TextEncoder.from_pretrained(tmp_path / "clip", max_length=8)
    assert enc.hidden_size == 16 and enc.encode(["Pullover", "Coat"]).shape == (2, 8, 16)
    again = TextEncoder.from_pretrained(enc.save_pretrained(tmp_path / "copy"), max_length=8)
    torch.testing.assert_close(again.encode(["Pullover"]), enc.encode(["Pullover"]))


def test_caption_dropout_rate_is_roughly_p():
    captions = ["Sneaker"] * 4000
    gen = torch.Generator().manual_seed(0)
    dropped = drop_captions(captions, 0.25, generator=gen)
    rate = sum(c == "" for c in dropped) / len(captions)
    assert abs(rate - 0.25) < 0.03
    assert {c for c in dropped if c} == {"Sneaker"}
    assert drop_captions(captions[:10], 0.0) == captions[:10]
    assert drop_captions(captions[:10], 1.0) == [""] * 10
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_captions(captions, 1.5)


def test_caption_dropout_follows_the_global_rng():
    torch.manual_seed(7)
    a = drop_captions([str(i) for i in range(64)], 0.5)
    torch.manual_seed(7)
    assert drop_captions([str(i) for i in range(64)], 0.5) == a  # restored RNG → same drops (exact resume)


# ---- bad input ------------------------------------------------------------------------------
def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere/clip.*does not exist"):
        TextEncoder.from_pretrained(tmp_path / "nowhere" / "clip")
    with pytest.raises(ValueError, match="text.path is empty"):
        TextEncoder.from_config(TextEncoderConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TextEncoder.from_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no CLIP tokenizer files"):
        TextEncoder.from_pretrained(tmp_path / "empty")


def test_max_length_beyond_the_model_positions_is_refused(hub_folder):
    with pytest.raises(ValueError, match="max_length=77 but the text model .* has only 12 positions"):
        TextEncoder.from_pretrained(hub_folder, max_length=77)


def test_cross_attention_mismatch_names_both_numbers(enc):
    with pytest.raises(ValueError, match=r"cross_attention_dim=64 but the text encoder .* hidden size 24"):
        check_cross_attention_dim(64, enc)
    check_cross_attention_dim(24, enc)
