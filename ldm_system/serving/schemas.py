"""JSON request bodies of the HTTP server (pydantic models; types only, limits live in ServerLimits).

Images travel as base64-encoded PNG (JPEG is accepted on input). Classes are names ("Sneaker") or
integer ids; `classes` is one value for the whole batch or one per image; `prompts` (text-conditioned
models) likewise one string or one per image. Unknown keys are rejected,
as in the YAML configs: a typo such as "guidence" must not be silently ignored.
"""
from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field

ClassValue = Union[int, str]


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


class _ImagesRequest(_Request):
    images: list[str] = Field(..., description="base64 PNG/JPEG images")
    resize: bool = Field(False, description="apply the resize policy (shorter side + centre crop) instead of rejecting other sizes")
    steps: int = 50
    guidance: float = 1.0


class InvertRequest(_ImagesRequest):
    classes: Optional[Union[ClassValue, list[ClassValue]]] = None
    prompts: Optional[Union[str, list[str]]] = Field(None, description="text-conditioned models: one prompt, or one per image")
    fixed_point_iters: int = 0
    null_optimization: bool = False
    return_noise: bool = Field(False, description="also return x_T (float32, little-endian, base64) and, with null_optimization, the fitted null embeddings")


class EditRequest(_ImagesRequest):
    source_class: Optional[ClassValue] = Field(None, description="required for class edits")
    target_class: Optional[ClassValue] = Field(None, description="class models: give this or target_prompt")
    source_prompt: Optional[str] = Field(None, description="text models: a caption of the input (default: the empty prompt)")
    target_prompt: Optional[str] = Field(None, description="text models: give this or target_class")
    keep_steps: Optional[int] = Field(None, description="class edit: steps that follow the source class")
    strength: Optional[float] = Field(None, description="SDEdit mode when set: noise level in (0, 1]")
    seed: int = 0


class InterpolateRequest(_Request):
    images: list[str] = Field(..., description="exactly two base64 PNG/JPEG images: the ends of the path")
    resize: bool = Field(False, description="apply the resize policy instead of rejecting other sizes")
    num: int = Field(8, description="frames, both ends included")
    steps: int = 50
    classes: Optional[Union[ClassValue, list[ClassValue]]] = Field(None, description="one class for both, or one each")
    prompts: Optional[Union[str, list[str]]] = Field(None, description="text models: one prompt for both, or one each")


__all__ = ["EditRequest", "InterpolateRequest", "InvertRequest", "SampleRequest"]
