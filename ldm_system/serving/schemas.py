"""JSON request bodies of the HTTP server (pydantic models): the wire format, converted into the
request dataclasses of `serving/requests.py`, which hold every rule.

Images travel as base64-encoded PNG (JPEG is accepted on input). Classes are names ("Sneaker") or
integer ids; `classes` is one value for the whole batch or one per image; `prompts` (text-conditioned
models) likewise one string or one per image. Unknown keys are rejected,
as in the YAML configs: a typo such as "guidence" must not be silently ignored.

`parse_body` reads the JSON: Python's reader accepts NaN, Infinity and 1e999 (which overflows to
infinity), so every number in the body is checked to be finite, wherever it sits.
"""
from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field

from ldm_system.models.conditioning import per_image
from ldm_system.serving import requests

ClassValue = Union[int, str]


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object; a non-finite number anywhere in it is a ValueError naming where."""
    if not raw:
        raise ValueError("the request body is empty: send a JSON object")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"the request body is not valid JSON: {e}") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits, nesting too deep
        raise ValueError(f"the request body is not usable JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the request body must be a JSON object, got {type(data).__name__}")
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:  # iterative: a deeply nested body must not exhaust the recursion limit
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{path or 'body'}: numbers must be finite, got {value} (NaN, Infinity and values "
                             "beyond the float range such as 1e999 are refused)")
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
    return data


def flatten_errors(errors: Sequence[dict]) -> str:
    """pydantic's error list as one line: "num: Input should be a valid integer; ..."."""
    parts = []
    for err in errors:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "path"))
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleRequest(_Request):
    num: int = Field(1, description="images to draw")
    classes: Optional[Union[ClassValue, list[ClassValue]]] = Field(None, description="one class, or one per image; null: unconditional")
    prompts: Optional[Union[str, list[str]]] = Field(None, description="text-conditioned models: one prompt, or one per image")
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    guidance: float = 1.0
    seed: int = 0
    height: Optional[int] = Field(None, description="pixels, a multiple of the model's pixel step; null: the training size")
    width: Optional[int] = Field(None, description="pixels, as height")

    def request(self) -> requests.SampleRequest:
        return requests.SampleRequest(self.num, per_image(self.classes, self.num, "classes"),
                                      per_image(self.prompts, self.num, "prompts", "prompt"),
                                      self.sampler, self.steps, self.eta, self.guidance, self.seed,
                                      self.height, self.width)


class _Uploads(_Request):
    """How uploaded images meet the model: its exact size, a centre crop (`resize`), or any size."""

    resize: bool = Field(False, description="apply the resize policy (shorter side + centre crop) instead of rejecting other sizes")
    keep_shape: bool = Field(False, description="any size: each image keeps its aspect at about the model's pixel "
                                                "count (sides multiples of its pixel step), or takes height x width")
    height: Optional[int] = Field(None, description="with keep_shape: pixels, a multiple of the model's pixel step")
    width: Optional[int] = Field(None, description="with keep_shape: pixels, as height")


class _ImagesRequest(_Uploads):
    images: list[str] = Field(..., description="base64 PNG/JPEG images")
    steps: int = 50
    guidance: float = 1.0


class InvertRequest(_ImagesRequest):
    classes: Optional[Union[ClassValue, list[ClassValue]]] = None
    prompts: Optional[Union[str, list[str]]] = Field(None, description="text-conditioned models: one prompt, or one per image")
    fixed_point_iters: int = 0
    null_optimization: bool = False
    return_noise: bool = Field(False, description="also return x_T (float32, little-endian, base64) and, with null_optimization, the fitted null embeddings")

    def request(self) -> requests.InvertRequest:
        n = len(self.images)
        return requests.InvertRequest(per_image(self.classes, n, "classes"), per_image(self.prompts, n, "prompts", "prompt"),
                                      self.steps, self.fixed_point_iters, self.guidance, self.null_optimization)


class EditRequest(_ImagesRequest):
    source_class: Optional[ClassValue] = Field(None, description="required for class edits")
    target_class: Optional[ClassValue] = Field(None, description="class models: give this or target_prompt")
    source_prompt: Optional[str] = Field(None, description="text models: a caption of the input (default: the empty prompt)")
    target_prompt: Optional[str] = Field(None, description="text models: give this or target_class")
    keep_steps: Optional[int] = Field(None, description="class edit: steps that follow the source class")
    strength: Optional[float] = Field(None, description="SDEdit mode when set: noise level in (0, 1]")
    seed: int = 0

    def request(self, limits: requests.Limits, kind: str) -> requests.EditRequest | requests.SDEditRequest:
        return requests.edit_or_sdedit(
            source_class=self.source_class, target_class=self.target_class, source_prompt=self.source_prompt,
            target_prompt=self.target_prompt, keep_steps=self.keep_steps, strength=self.strength, steps=self.steps,
            guidance=self.guidance, seed=self.seed, names=requests.HTTP, limits=limits, kind=kind)


class InterpolateRequest(_Uploads):
    images: list[str] = Field(..., description="exactly two base64 PNG/JPEG images: the ends of the path")
    num: int = Field(8, description="frames, both ends included")
    steps: int = 50
    classes: Optional[Union[ClassValue, list[ClassValue]]] = Field(None, description="one class for both, or one each")
    prompts: Optional[Union[str, list[str]]] = Field(None, description="text models: one prompt for both, or one each")

    def request(self) -> requests.InterpolateRequest:
        return requests.InterpolateRequest(self.num, self.steps, per_image(self.classes, 2, "classes"),
                                           per_image(self.prompts, 2, "prompts", "prompt"))


__all__ = ["EditRequest", "InterpolateRequest", "InvertRequest", "SampleRequest", "flatten_errors", "parse_body"]
