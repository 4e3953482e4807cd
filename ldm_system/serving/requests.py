"""The five requests a served model answers, as typed values that own their rules.

    req = SampleRequest(num=4, classes=["Sneaker"] * 4, steps=50, guidance=3.0)
    req.check()                                   # Python API: ValueError naming the argument
    req.check(limits, names=HTTP)                 # the server: its per-request limits too
    pipe.sample(**req.arguments())

Every rule is written here once; the CLI, the HTTP server and `LDMPipeline` only parse into these
values. Rules that need no model (ranges, "classes or prompts, not both", what null-condition
inversion needs) run in `check`, so the CLI can refuse a bad flag before loading any weights; the
model's own rules (known classes, class vs text model) live in `models/conditioning.py`.

Messages name what the user typed: `names` maps a field to its spelling in each front end (`--keep-steps`
on the command line, `keep_steps` in JSON), so one rule gives the right sentence everywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

from ldm_system.diffusion.samplers import SAMPLERS
from ldm_system.models.conditioning import ClassSpec

Names = Mapping[str, str]
API: Names = {"null_optimization": "null-condition inversion"}  # keyword arguments of LDMPipeline
HTTP: Names = {}  # JSON fields are the dataclass fields


@dataclass(frozen=True)
class Limits:
    """Upper bounds a front end puts on each request (None: unbounded). The server sets them: every
    request holds the model for its whole run, so they bound latency."""

    max_steps: int | None = None
    max_batch: int | None = None
    max_fixed_point_iters: int | None = None
    max_null_opt_steps: int | None = None
    max_guidance: float | None = None
    label: str = "server limit"  # said in range errors that come from these bounds


NO_LIMITS = Limits()


class _Rules:
    """The checks, spelled for one front end."""

    def __init__(self, names: Names, limits: Limits) -> None:
        self.names, self.limits = names, limits

    def __call__(self, field: str) -> str:
        return self.names.get(field, field)

    def count(self, field: str, value: int, low: int, high: int | None, note: str = "", name: str = "") -> None:
        name = name or self(field)
        if high is None:
            if value < low:
                raise ValueError(f"{name} must be positive, got {value}" if low == 1
                                 else f"{name} must be at least {low}, got {value}")
        elif not low <= value <= high:
            raise ValueError(f"{name} must lie in {low}..{high} ({note or self.limits.label}), got {value}")

    def steps(self, steps: int, high: int | None = None, name: str = "") -> None:
        self.count("steps", steps, 1, high or self.limits.max_steps, name=name)

    def finite(self, field: str, value: float, low: float = 0.0) -> None:
        if not (math.isfinite(value) and value >= low):
            raise ValueError(f"{self(field)} must be a finite number >= {low:g}, got {value}")

    def guidance(self, scale: float) -> None:
        top = self.limits.max_guidance
        if top is None:
            self.finite("guidance", scale)
        elif not (math.isfinite(scale) and 0 <= scale <= top):
            raise ValueError(f"{self('guidance')} must lie in [0, {top}], got {scale}")

    def one_kind(self, class_fields: Sequence[str], prompt_fields: Sequence[str],
                 classes_given: bool, prompts_given: bool) -> None:
        """Classes condition class models, prompts text models: a request gives one kind or neither."""
        if classes_given and prompts_given:
            c, p = "/".join(map(self, class_fields)), "/".join(map(self, prompt_fields))
            models = ("class-conditional models", "text-conditioned models") if len(class_fields) == 1 else \
                ("class models", "text models")  # keep the pair sentence short
            raise ValueError(f"give {c} ({models[0]}) or {p} ({models[1]}), not both")


class _Request:
    def arguments(self) -> dict[str, Any]:
        """The fields as keyword arguments of the `LDMPipeline` verb of the same name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SampleRequest(_Request):
    num: int = 1
    classes: Sequence[ClassSpec] | None = None  # one per image (class models)
    prompts: Sequence[str] | None = None  # one per image (text models)
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    guidance: float = 1.0
    seed: int = 0
    height: int | None = None  # pixels; None: the model's base size. A multiple of the model's
    width: int | None = None  # pixel step (LDMPipeline.pixel_step), checked with the model

    def check(self, limits: Limits = NO_LIMITS, names: Names = API) -> "SampleRequest":
        r = _Rules(names, limits)
        r.count("num", self.num, 1, limits.max_batch)
        for side in ("height", "width"):
            if getattr(self, side) is not None:
                r.count(side, getattr(self, side), 1, None)
        r.steps(self.steps)
        r.guidance(self.guidance)
        r.finite("eta", self.eta)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {sorted(SAMPLERS)}")
        r.one_kind(["classes"], ["prompts"], self.classes is not None, self.prompts is not None)
        return self


@dataclass(frozen=True)
class InvertRequest(_Request):
    classes: Sequence[ClassSpec] | None = None
    prompts: Sequence[str] | None = None
    steps: int = 50
    fixed_point_iters: int = 0
    guidance: float = 1.0  # the reconstruction's
    null_optimization: bool = False
    null_inner_steps: int = 10
    null_lr: float = 0.05

    def check(self, limits: Limits = NO_LIMITS, names: Names = API) -> "InvertRequest":
        r = _Rules(names, limits)
        if self.null_optimization:  # ~12 evaluations per step: a tighter bound where there is one
            r.steps(self.steps, limits.max_null_opt_steps, name=f"{r('steps')} (with {r('null_optimization')})")
        else:
            r.steps(self.steps)
        r.guidance(self.guidance)
        r.count("fixed_point_iters", self.fixed_point_iters, 0, limits.max_fixed_point_iters)
        r.one_kind(["classes"], ["prompts"], self.classes is not None, self.prompts is not None)
        if self.null_optimization and (self.classes is None and self.prompts is None or self.guidance == 1.0):
            # it fits the *guided* reconstruction towards a condition: without both there is nothing to fit
            raise ValueError(f"{r('null_optimization')} needs {r('classes')} (class models) or {r('prompts')} "
                             f"(text models) and {r('guidance')} other than 1")
        r.count("null_inner_steps", self.null_inner_steps, 0, None)
        if not (math.isfinite(self.null_lr) and self.null_lr > 0):
            raise ValueError(f"{r('null_lr')} must be a finite number > 0, got {self.null_lr}")
        return self


@dataclass(frozen=True)
class EditRequest(_Request):
    """Invert under the source condition, regenerate under the target; text models: prompts."""

    source_class: ClassSpec | None = None
    target_class: ClassSpec | None = None
    steps: int = 50
    keep_steps: int | None = None  # steps that follow the source (layout); None: steps // 5
    guidance: float = 1.0
    source_prompt: str | None = None  # a caption of the input; None: the empty prompt
    target_prompt: str | None = None

    def check(self, limits: Limits = NO_LIMITS, names: Names = API, kind: str | None = None) -> "EditRequest":
        """kind: the model's conditioning ("none" | "class" | "text") where it is known already."""
        r = _Rules(names, limits)
        r.steps(self.steps)
        r.guidance(self.guidance)
        classes_given = self.source_class is not None or self.target_class is not None
        prompts_given = self.source_prompt is not None or self.target_prompt is not None
        r.one_kind(["source_class", "target_class"], ["source_prompt", "target_prompt"], classes_given, prompts_given)
        if kind == "none":
            raise ValueError("edits need a class- or text-conditional model (this one is unconditional; try sdedit)")
        if kind == "text" and classes_given:
            raise ValueError("this model is text-conditional; edit with source_prompt/target_prompt, not classes")
        if kind == "class" and prompts_given:
            raise ValueError("this model is not text-conditional; edit with source_class/target_class, not prompts")
        if prompts_given or kind == "text":
            if self.target_prompt is None:
                raise ValueError(f"a text edit needs {r('target_prompt')} ({r('source_prompt')} defaults to '', "
                                 "the empty prompt)")
        elif self.target_class is None:
            raise ValueError(f"a class edit needs {r('source_class')} and {r('target_class')}")
        elif self.source_class is None:
            raise ValueError(f"{r('source_class')} is required for a class edit")
        if self.keep_steps is not None and not 0 <= self.keep_steps <= self.steps:
            raise ValueError(f"{r('keep_steps')} must lie in [0, {r('steps')}={self.steps}], got {self.keep_steps}")
        return self


@dataclass(frozen=True)
class SDEditRequest(_Request):
    """SDEdit towards target_class (class models) or target_prompt(s) (text models); neither: unconditional."""

    strength: float = 0.6  # noise level: 0 returns the input's codec round trip, 1 samples from pure noise
    target_class: ClassSpec | None = None
    steps: int = 50
    guidance: float = 1.0
    seed: int = 0
    target_prompt: str | Sequence[str] | None = None  # one prompt or one per image

    def check(self, limits: Limits = NO_LIMITS, names: Names = API) -> "SDEditRequest":
        r = _Rules(names, limits)
        r.steps(self.steps)
        r.guidance(self.guidance)
        if not 0 <= self.strength <= 1:  # also refuses NaN
            raise ValueError(f"{r('strength')} must lie in [0, 1], got {self.strength}")
        r.one_kind(["target_class"], ["target_prompt"], self.target_class is not None, self.target_prompt is not None)
        return self


@dataclass(frozen=True)
class InterpolateRequest(_Request):
    num: int = 8  # frames, both ends included
    steps: int = 50
    classes: Sequence[ClassSpec] | None = None  # one per end
    prompts: str | Sequence[str] | None = None  # one for both ends or one each

    def check(self, limits: Limits = NO_LIMITS, names: Names = API) -> "InterpolateRequest":
        r = _Rules(names, limits)
        r.steps(self.steps)
        note = f"frames, both ends included; {limits.label}"
        r.count("num", self.num, 2, limits.max_batch, note=note)
        r.one_kind(["classes"], ["prompts"], self.classes is not None, self.prompts is not None)
        return self


def edit_or_sdedit(*, source_class: ClassSpec | None, target_class: ClassSpec | None, source_prompt: str | None,
                   target_prompt: str | None, keep_steps: int | None, strength: float | None, steps: int,
                   guidance: float, seed: int, names: Names = API, limits: Limits = NO_LIMITS,
                   kind: str | None = None) -> EditRequest | SDEditRequest:
    """The front ends' one `edit` command: a class/text edit, or SDEdit when `strength` is given.
    Both take exactly one target; a strength of 0 would return the input, so it must be positive."""
    r = _Rules(names, limits)
    if strength is not None and keep_steps is not None:
        raise ValueError(f"give {r('keep_steps')} (class edit) or {r('strength')} (SDEdit), not both")
    if (target_class is None) == (target_prompt is None):
        raise ValueError(f"give exactly one of {r('target_class')} (class-conditional models) or "
                         f"{r('target_prompt')} (text-conditioned models)")
    r.one_kind(["source_class", "target_class"], ["source_prompt", "target_prompt"],
               source_class is not None or target_class is not None,
               source_prompt is not None or target_prompt is not None)
    if strength is None:
        return EditRequest(source_class, target_class, steps, keep_steps, guidance, source_prompt,
                           target_prompt).check(limits, names, kind)
    if not 0 < strength <= 1:
        raise ValueError(f"{r('strength')} must lie in (0, 1], got {strength}")
    return SDEditRequest(strength, target_class, steps, guidance, seed, target_prompt).check(limits, names)


__all__ = ["API", "HTTP", "EditRequest", "InterpolateRequest", "InvertRequest", "Limits", "NO_LIMITS", "Names",
           "SDEditRequest", "SampleRequest", "edit_or_sdedit"]
