"""What the user asks for (class names or ids, prompts) → what the denoiser takes.

    cond = Conditioning.of(unet_cfg, class_names, text, embed=net.class_embedding, device=dev)
    c = cond.condition(classes=["Sneaker", 3], prompts=None, n=2)    # (2,) ids; text models: (2, L, D)
    g = cond.guidance(3.0, c)                                         # Guidance with the null condition

One place for the conditioning rules that training previews and serving share: class ids (names
resolved against the model's class list, the null class K for "no class"), prompt states from the
frozen text encoder (the empty prompt for "no prompt"), the null condition classifier-free guidance
mixes with, and the float forms null-condition inversion optimises. `per_image` is the one rule for
"one value for every image, or one per image".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
from torch import Tensor

from ldm_system.diffusion.guidance import Guidance
from ldm_system.models.text import TextEncoder
from ldm_system.models.unet import UNetConfig

ClassSpec = int | str
T = TypeVar("T")


def per_image(values: T | Sequence[T] | None, n: int, what: str, unit: str = "value") -> list[T] | None:
    """One value for all n images (a scalar or a one-element list) or exactly one per image; None stays None."""
    if values is None:
        return None
    items = [values] if isinstance(values, (str, int)) else list(values)
    if len(items) == 1:
        items = items * n
    if len(items) != n:
        raise ValueError(f"{what}: give one {unit} or one per image ({n}), got {len(items)}")
    return items


@dataclass(frozen=True, eq=False)
class Conditioning:
    kind: str  # "none" | "class" | "text" (UNetConfig.conditioning)
    num_classes: int = 0  # K; id K is the null class (dropped labels in training)
    class_names: tuple[str, ...] = ()
    text: TextEncoder | None = None
    embed: Callable[[Tensor], Tensor] | None = None  # class ids (B,) → the UNet's embedding rows (B, E)
    device: torch.device = torch.device("cpu")

    @classmethod
    def of(cls, unet: UNetConfig, class_names: Sequence[str] = (), text: TextEncoder | None = None,
           embed: Callable[[Tensor], Tensor] | None = None, device: torch.device | str = "cpu") -> "Conditioning":
        return cls(unet.conditioning, unet.num_classes, tuple(class_names), text, embed, torch.device(device))

    # ---- what the model accepts -------------------------------------------------------------
    def check_kind(self, classes_given: bool, prompts_given: bool) -> None:
        """Refuse classes for a model that takes none, prompts for a model that is not text-conditional."""
        if self.kind == "text" and classes_given:
            raise ValueError("this model is text-conditional; pass prompts, not classes")
        if self.kind != "text" and prompts_given:
            raise ValueError("this model is not text-conditional; pass classes, not prompts")
        if self.kind == "none" and classes_given:
            raise ValueError("this model is not class-conditional; do not pass classes")

    def class_id(self, c: ClassSpec) -> int:
        """A class name or an integer id (also as a string, as the CLI passes it) → its id."""
        k = self.num_classes
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in self.class_names:
                known = ", ".join(self.class_names) or f"(unnamed) 0..{k - 1}"
                raise ValueError(f"unknown class {c!r}; known classes: {known}")
            return self.class_names.index(c)
        i = int(c)
        if not 0 <= i < k:
            raise ValueError(f"unknown class {c!r}: class ids are 0..{k - 1}")
        return i

    def cycle_classes(self, n: int) -> list[int]:
        """Ids 0, 1, …, K−1, 0, … for n images (sample grids, training previews)."""
        if self.kind != "class":
            raise ValueError("this model is not class-conditional")
        return [i % self.num_classes for i in range(n)]

    def columns(self, n: int, classes: Sequence[ClassSpec] = (), prompts: Sequence[str] = (),
                default_prompts: Sequence[str] = ()) -> tuple[list, list[str]]:
        """What each column of a preview grid is conditioned on, and its label: the given `classes`
        (ids, labelled by name when the model has names) or `prompts`; by default the classes 0..K-1,
        or, for text models, the distinct `default_prompts` (at most n columns each). Unconditional
        models: ⌈√n⌉ unlabelled columns."""
        self.check_kind(bool(classes), bool(prompts))
        if self.kind == "class":
            ids = [self.class_id(c) for c in classes] if classes else self.cycle_classes(min(n, self.num_classes))
            names = self.class_names
            return ids, [names[i] if i < len(names) else str(i) for i in ids]
        if self.kind == "text":
            chosen = list(prompts) or list(dict.fromkeys(default_prompts))[:n] or [""]
            return chosen, chosen
        return [None] * max(1, math.ceil(math.sqrt(n))), []

    # ---- conditions ---------------------------------------------------------------------------
    def class_ids(self, classes: Sequence[ClassSpec] | None, n: int) -> Tensor | None:
        """(n,) long ids for class models (None → the null class); None for other models."""
        self.check_kind(classes is not None and any(c is not None for c in classes), False)
        if self.kind != "class":
            return None
        if classes is None:
            return torch.full((n,), self.num_classes, dtype=torch.long, device=self.device)
        if len(classes) != n:
            raise ValueError(f"got {len(classes)} classes for {n} images")
        return torch.tensor([self.class_id(c) for c in classes], dtype=torch.long, device=self.device)

    def condition(self, classes: Sequence[ClassSpec] | None, prompts: Sequence[str] | None, n: int) -> Tensor | None:
        """Class ids (n,) for class models, prompt states (n, L, D) for text models (no prompts: the
        empty prompt, i.e. unconditional), None for unconditional models. One entry per image."""
        if self.kind != "text":
            self.check_kind(False, prompts is not None)
            return self.class_ids(classes, n)
        self.check_kind(classes is not None and any(c is not None for c in classes), False)
        prompts = [""] * n if prompts is None else prompts
        if isinstance(prompts, str) or len(prompts) != n:
            raise ValueError(f"give a list of {n} prompts, got {prompts!r}")
        return self.text.encode(list(prompts))

    def null(self) -> Tensor | None:
        """The unconditional input, batch 1 (guidance broadcasts it): the null class id (1,) or the
        empty prompt's states (1, L, D); None for unconditional models."""
        if self.kind == "class":
            return torch.full((1,), self.num_classes, dtype=torch.long, device=self.device)
        return self.text.null() if self.kind == "text" else None

    def guidance(self, scale: float, cond: Tensor | None) -> Guidance | None:
        """Classifier-free guidance towards `cond` at `scale` (None when it would change nothing:
        scale 1, or no condition at all)."""
        if cond is None or scale == 1.0:
            return None
        return Guidance(scale=scale, null_cond=self.null())

    # ---- float forms (null-condition inversion, interpolation) ------------------------------
    def as_float(self, cond: Tensor) -> Tensor:
        """Class ids → their embedding rows (B, E); prompt states (B, L, D) as they are."""
        return cond if cond.is_floating_point() else self.embed(cond).detach()

    def null_start(self, n: int) -> Tensor:
        """The unconditional input null-condition inversion starts from, one copy per image: the null
        class's embedding (n, E), or the empty prompt's states (n, L, D) (null-text inversion)."""
        null = self.as_float(self.null())
        return null.detach().expand(n, *null.shape[1:]).clone()


__all__ = ["ClassSpec", "Conditioning", "per_image"]
