"""The frozen text encoder for `conditioning="text"`: captions → CLIP hidden states (B, L, D).

    enc = TextEncoder.from_pretrained("models/clip-vit-base-patch32", max_length=77)
    states = enc.encode(["a sneaker", ""])        # (2, 77, 512), fp32, no grad
    null = enc.null()                              # (1, 77, 512): the empty caption, CFG's null condition

It is a `transformers` `CLIPTextModel` plus its tokenizer, read from a *local* folder only (nothing
is downloaded). Two layouts are accepted:

- one folder holding the model (`config.json` + weights, a CLIPTextModel or a full CLIPModel) and the
  tokenizer files (`vocab.json` + `merges.txt`, or `tokenizer.json`), as a hub snapshot has them;
- a folder with `text_encoder/` and `tokenizer/` subfolders (the Stable Diffusion layout, and what
  `ldm export` writes).

Like Stable Diffusion v1 we use the last hidden states of captions padded to `max_length` and pass
no attention mask: CLIP's causal mask already keeps padding from changing the caption's tokens, and
a fixed L lets the conditional and the null condition share one batched UNet call.

The encoder is frozen (eval, fp32, no grad) and is not a trainable module: the engine never
prepares, wraps or checkpoints it; checkpoints record its path, `ldm export` copies it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

TEXT_ENCODER_DIR, TOKENIZER_DIR = "text_encoder", "tokenizer"


@dataclass(frozen=True)
class TextEncoderConfig:
    path: str = ""  # local folder (see the module docstring); required when unet.conditioning is "text"
    max_length: int = 77  # tokens per caption (L), padded/truncated; at most the model's position count

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"text.max_length must be at least 2 (start and end tokens), got {self.max_length}")


class TextEncoder:
    def __init__(self, model: nn.Module, tokenizer, max_length: int, source: str = "") -> None:
        positions = int(model.config.max_position_embeddings)
        if max_length > positions:
            raise ValueError(f"text.max_length={max_length} but the text model {source} has only {positions} positions")
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"the tokenizer at {source} has {len(tokenizer)} tokens but the text model's vocabulary "
                             f"has {model.config.vocab_size}: they do not belong together")
        self.model = model.float().eval().requires_grad_(False)
        self.tokenizer, self.max_length, self.source = tokenizer, int(max_length), source
        self._null: torch.Tensor | None = None
        self.deliver_to: torch.device | None = None  # where encode() hands states out (None: the model's device)

    # ---- loading / saving ----------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: TextEncoderConfig) -> "TextEncoder":
        if not cfg.path:
            raise ValueError("unet.conditioning is 'text' but text.path is empty: point it at a local CLIP text "
                             "model folder (nothing is downloaded)")
        return cls.from_pretrained(cfg.path, cfg.max_length)

    @classmethod
    def from_pretrained(cls, path: str | Path, max_length: int = 77) -> "TextEncoder":
        from ldm_system.deps import check_no_foreign_kernels

        check_no_foreign_kernels()
        from transformers import CLIPTextModel, CLIPTokenizer

        model_dir, tok_dir = locate(path)
        model = CLIPTextModel.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32)
        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        return cls(model, tokenizer, max_length, source=str(Path(path).resolve()))

    def save_pretrained(self, out: str | Path) -> Path:
        """Write `out/text_encoder/` (safetensors) and `out/tokenizer/`: loadable by `from_pretrained(out)`
        and by diffusers' pipelines."""
        out = Path(out)
        self.model.save_pretrained(str(out / TEXT_ENCODER_DIR), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
        return out

    # ---- properties ------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "TextEncoder":
        self.model.to(device)
        self.deliver_to, self._null = None, None
        return self

    def serve_from_cpu(self, deliver_to: torch.device | str) -> "TextEncoder":
        """Keep the model on the CPU and hand states out on `deliver_to`: for a run that trains from
        cached states (data/text_cache.py) and encodes only its preview prompts, so the encoder takes
        no accelerator memory."""
        self.model.to("cpu")
        self.deliver_to, self._null = torch.device(deliver_to), None
        return self

    def describe(self) -> dict:
        """What checkpoints and `ldm.json` record about the encoder."""
        return {"source": self.source, "max_length": self.max_length, "hidden_size": self.hidden_size}

    # ---- encoding --------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """B captions → last hidden states (B, L, D), fp32 even inside autocast."""
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, not one string")
        tokens = self.tokenizer(list(captions), padding="max_length", max_length=self.max_length,
                                truncation=True, return_tensors="pt")
        ids = tokens.input_ids.to(self.device)  # (B, L)
        with torch.autocast(ids.device.type, enabled=False):
            states = self.model(input_ids=ids).last_hidden_state.float()  # (B, L, D)
        return states if self.deliver_to is None else states.to(self.deliver_to)

    def null(self) -> torch.Tensor:
        """The empty caption's states (1, L, D): the null condition for dropout and guidance."""
        if self._null is None:
            self._null = self.encode([""])
        return self._null


def locate(path: str | Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) for either accepted layout, or a clear error."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"text model path {str(path)!r} does not exist or is not a folder; give a local CLIP "
                                "text model folder (nothing is downloaded)")
    model_dir = p / TEXT_ENCODER_DIR if (p / TEXT_ENCODER_DIR / "config.json").exists() else p
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{p}: no config.json; expected a CLIP text model folder, or a folder with "
                                f"{TEXT_ENCODER_DIR}/ and {TOKENIZER_DIR}/")
    tok_dir = p / TOKENIZER_DIR if (p / TOKENIZER_DIR).is_dir() else model_dir
    if not (tok_dir / "tokenizer.json").exists() and not ((tok_dir / "vocab.json").exists() and (tok_dir / "merges.txt").exists()):
        raise FileNotFoundError(f"{tok_dir}: no CLIP tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    return model_dir, tok_dir


def check_cross_attention_dim(cross_attention_dim: int, encoder: TextEncoder) -> None:
    if cross_attention_dim != encoder.hidden_size:
        raise ValueError(f"unet.cross_attention_dim={cross_attention_dim} but the text encoder {encoder.source} has "
                         f"hidden size {encoder.hidden_size}: set unet.cross_attention_dim={encoder.hidden_size}")


def drop_captions(captions: Sequence[str], prob: float, generator: torch.Generator | None = None) -> list[str]:
    """Training-time caption dropout for CFG: each caption becomes "" with probability `prob`.

    Dropping the string before encoding makes a dropped row exactly the null condition. One draw per
    caption from `generator` (default: the global CPU RNG, which checkpoints restore: exact resume).
    """
    drop = _drop_mask(len(captions), prob, generator)  # (B,)
    return ["" if d else c for c, d in zip(captions, drop.tolist())]


def drop_states(states: torch.Tensor, null: torch.Tensor, prob: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """`drop_captions` for cached states (B, L, D): a dropped row becomes the null states (1, L, D).

    The same draws as `drop_captions` for the same B, so training from a cache drops the same rows
    as encoding online would."""
    drop = _drop_mask(states.shape[0], prob, generator).to(states.device)  # (B,)
    return torch.where(drop[:, None, None], null.to(states.dtype), states)


def _drop_mask(n: int, prob: float, generator: torch.Generator | None) -> torch.Tensor:
    if not 0 <= prob <= 1:
        raise ValueError(f"caption dropout probability must lie in [0, 1], got {prob}")
    return torch.rand(n, generator=generator) < prob  # (n,) bool, CPU RNG


# ---- a random tiny CLIP, for debug configs and tests (no download) ------------------------
_DEBUG_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-'/.,&"


def save_random_text_encoder(out: str | Path, hidden_size: int = 32, layers: int = 2, heads: int = 2,
                             max_length: int = 16, seed: int = 0, intermediate_size: int | None = None,
                             vocab_size: int | None = None) -> Path:
    """A randomly initialised CLIP text model with a character-level CLIP tokenizer, saved in the
    `text_encoder/` + `tokenizer/` layout. Random weights still map different captions to different
    states, which is all a debug run on class-name captions needs. intermediate_size (default 2 x
    hidden) and vocab_size (default: the tokenizer's) let it take a real model's size: CLIP ViT-L/14's
    text tower is hidden 768, 12 layers, 12 heads, intermediate 3072, vocabulary 49408, 77 positions."""
    from ldm_system.deps import check_no_foreign_kernels

    check_no_foreign_kernels()
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # CLIP's BPE marks a word's last symbol with "</w>"; with no merges every symbol is one token.
    vocab = {c: i for i, c in enumerate(_DEBUG_CHARS)}
    vocab.update({c + "</w>": len(_DEBUG_CHARS) + i for i, c in enumerate(_DEBUG_CHARS)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    cfg = CLIPTextConfig(vocab_size=vocab_size or len(vocab), hidden_size=hidden_size,
                         intermediate_size=intermediate_size or 2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_length,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    with torch.random.fork_rng(devices=[]):  # own seed: building it never shifts the caller's RNG
        torch.manual_seed(seed)
        model = CLIPTextModel(cfg)
    return TextEncoder(model, tokenizer, max_length).save_pretrained(out)


__all__ = ["TextEncoderConfig", "TextEncoder", "locate", "check_cross_attention_dim", "drop_captions",
           "drop_states", "save_random_text_encoder"]
