"""The Python API of a trained model (an `ldm export` folder).

    pipe = LDMPipeline.from_pretrained("outputs/demo/model")
    images = pipe.sample(8, classes=["Sneaker"] * 8, steps=50, guidance=3.0, seed=0)   # (8, C, H, W) in [-1, 1]
    images = text_pipe.sample(2, prompts=["Sneaker", "Bag"], guidance=3.0)             # text models
    inv = pipe.invert(images, classes=..., steps=50)                                   # x_T + reconstruction + PSNR
    wide = pipe.load_images(["banner.png"])          # aspect kept: (1, C, H, W) of about the base pixel count
    wide = pipe.load_images(["banner.png"], height=64, width=256)                      # or any multiple of pixel_step
    inv = text_pipe.invert(images, prompts=["Sneaker", "Bag"], guidance=3.0, null_optimization=True)  # null-text
    again = pipe.reconstruct(inv.x_T, prompts=[...], steps=50, guidance=3.0, null_embeddings=inv.null_embeddings)
    edited = pipe.edit(image, source_class="Sneaker", target_class="Sandal", keep_steps=20)
    edited = text_pipe.edit(image, source_prompt="Sneaker", target_prompt="Sandal", keep_steps=20)
    frames = pipe.interpolate(img_a, img_b, num=8)                                     # classes= / prompts=

Everything here composes `ldm_system.diffusion` functions with the UNet (`Denoiser`) and the
frozen stage-1 codec; the denoising loops live in `ldm_system/diffusion/`. Each verb checks its
arguments as a request (`serving/requests.py`) and turns classes/prompts into conditions through
`models/conditioning.py`; `callback(i, t, x, x̂₀)` is called after every sampler (or inversion) step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.diffusion.editing import class_edit, sdedit, slerp
from ldm_system.diffusion.guidance import Guidance
from ldm_system.diffusion.inversion import ddim_invert, reconstruct
from ldm_system.diffusion.loop import StepCallback, sample
from ldm_system.diffusion.null_inversion import null_condition_inversion
from ldm_system.diffusion.samplers import SamplerConfig, make_sampler
from ldm_system.models.conditioning import ClassSpec, Conditioning, per_image
from ldm_system.artifacts.exported import load_exported_ldm
from ldm_system.images import LoadedImage, open_image_file
from ldm_system.models.latent import LatentCodec
from ldm_system.models.text import TextEncoder, check_cross_attention_dim
from ldm_system.models.unet import Denoiser
from ldm_system.serving.metrics import InversionResult, inversion_result
from ldm_system.serving.requests import EditRequest, InterpolateRequest, InvertRequest, SampleRequest, SDEditRequest


class LDMPipeline:
    def __init__(self, denoiser: Denoiser, codec: LatentCodec, diffusion: DiffusionConfig,
                 classes: Sequence[str] = (), image_size: int | None = None, image_channels: int | None = None,
                 text: TextEncoder | None = None, steps_offset: int = 0) -> None:
        self.net = denoiser.eval().requires_grad_(False)
        self.steps_offset = steps_offset  # the exported scheduler's grid offset (SD pipelines insist on 1)
        self.codec, self.diffusion, self.text = codec, diffusion, text
        if denoiser.cfg.conditioning == "text":
            if text is None:
                raise ValueError("a text-conditioned UNet needs its text encoder")
            check_cross_attention_dim(denoiser.cfg.cross_attention_dim, text)
        self.schedule = diffusion.schedule()
        self.classes = list(classes)
        self.device = next(denoiser.parameters()).device
        self.conditioning = Conditioning.of(denoiser.cfg, self.classes, text,
                                            embed=self.net.class_embedding, device=self.device)
        u = denoiser.cfg
        f = 1 if codec.is_identity else codec.ae.cfg.f
        self.image_size = image_size or u.sample_size * f
        self.f = f
        self.image_channels = image_channels or (u.in_channels if codec.is_identity else codec.ae.cfg.in_channels)

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "LDMPipeline":
        """Load an `ldm export` folder (or a diffusers pipeline folder; `artifacts/exported.py` loads both): a missing
        or damaged part is an error that names the file."""
        parts = load_exported_ldm(path, device)
        return cls(parts.denoiser, parts.codec, parts.diffusion, parts.classes, text=parts.text,
                   steps_offset=parts.grid.steps_offset)

    # ---- helpers ---------------------------------------------------------------------------
    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond):
        return self.net(x, t, cond)

    def _sampler(self, name: str, steps: int, eta: float = 0.0, spacing: str | None = None):
        if steps <= 0:
            raise ValueError(f"steps must be positive, got {steps}")
        return make_sampler(SamplerConfig(name=name, num_steps=steps, eta=eta, spacing=spacing,
                                          steps_offset=self.steps_offset), self.schedule,
                            self.diffusion.prediction_type)

    @property
    def pixel_step(self) -> int:
        """Image sides must be multiples of this: the autoencoder's f times the UNet's downsampling."""
        return self.f * 2 ** (len(self.net.cfg.block_out_channels) - 1)

    def latent_shape(self, n: int, height: int | None = None, width: int | None = None) -> tuple[int, int, int, int]:
        """(n, c, h, w) of the latents for images of height x width pixels (None: the base size)."""
        u = self.net.cfg
        step = self.pixel_step
        for name, side in (("height", height), ("width", width)):
            if side is not None and (side < 1 or side % step):
                raise ValueError(f"{name} {side} is not a multiple of {step} (the autoencoder's f={self.f} times the "
                                 f"UNet's downsampling {step // self.f}); try {max(step, round(side / step) * step)}")
        h = u.sample_size if height is None else height // self.f
        w = u.sample_size if width is None else width // self.f
        return (n, u.in_channels, h, w)

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) of any height and width that are multiples of `pixel_step` (the shape is kept)."""
        c, step = self.image_channels, self.pixel_step
        if images.ndim != 4 or images.shape[1] != c or images.shape[2] % step or images.shape[3] % step:
            raise ValueError(f"images must be (B, {c}, H, W) with H and W multiples of {step}, got "
                             f"{tuple(images.shape)}; load files with LDMPipeline.load_images (resized, aspect kept)")
        return images.to(self.device).float()

    def open_images(self, paths: Sequence[str | Path], height: int | None = None,
                    width: int | None = None) -> list[LoadedImage]:
        """Image files → `LoadedImage`s that keep each image's aspect (images.kept_shape) at about the
        base size, or at height x width where given (multiples of `pixel_step`)."""
        self.latent_shape(1, height, width)  # checks the sides
        return [open_image_file(p, self.image_size, self.image_channels, self.pixel_step, height, width)
                for p in paths]

    def load_images(self, paths: Sequence[str | Path], height: int | None = None,
                    width: int | None = None) -> torch.Tensor:
        """Image files → one batch (B, C, H, W) in [-1, 1] (see `open_images`); they must come out in one shape."""
        return stack_images(self.open_images(paths, height, width), paths).to(self.device)

    # ---- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num: int, classes: Sequence[ClassSpec] | None = None, sampler: str = "ddim", steps: int = 50,
               eta: float = 0.0, guidance: float = 1.0, seed: int = 0, progress: bool = False,
               prompts: Sequence[str] | None = None, callback: StepCallback | None = None,
               height: int | None = None, width: int | None = None) -> torch.Tensor:
        """num images (num, C, H, W) in [-1, 1]; classes or prompts: one per image (none: unconditional).
        height / width: any multiple of `pixel_step` (a model trained on buckets draws every bucket)."""
        r = SampleRequest(num, classes, prompts, sampler, steps, eta, guidance, seed, height, width).check()
        shape = self.latent_shape(r.num, r.height, r.width)
        cond = self.conditioning.condition(r.classes, r.prompts, r.num)
        # an unconditional draw would mix the null output with itself, at twice the cost
        g = self.conditioning.guidance(r.guidance, cond) if r.classes is not None or r.prompts is not None else None
        gen = torch.Generator(device="cpu").manual_seed(r.seed)
        z = sample(self.model_fn, self._sampler(r.sampler, r.steps, r.eta), shape,
                   num_steps=r.steps, cond=cond, guidance=g, generator=gen, device=self.device, progress=progress,
                   callback=callback)
        return self.codec.decode(z).clamp(-1, 1)

    # ---- inversion -------------------------------------------------------------------------
    def invert(self, images: torch.Tensor, classes: Sequence[ClassSpec] | None = None, steps: int = 50,
               fixed_point_iters: int = 0, guidance: float = 1.0, null_optimization: bool = False,
               null_inner_steps: int = 10, null_lr: float = 0.05,
               prompts: Sequence[str] | None = None, callback: StepCallback | None = None) -> InversionResult:
        """DDIM inversion → x_T, then DDIM reconstruction on the same grid; reports PSNR/SSIM/latent MSE.

        classes (class models) or prompts (text models, one per image; none: the empty prompt)
        condition both passes. With guidance > 1, plain inversion reconstructs under guidance (which
        drifts) unless `null_optimization` fits per-step unconditional inputs: null-class embeddings
        for class models, null-text states for text models (Mokady et al. 2022); they are returned
        in `InversionResult.null_embeddings`.
        """
        r = InvertRequest(classes, prompts, steps, fixed_point_iters, guidance, null_optimization,
                          null_inner_steps, null_lr).check()
        images = self.check_images(images)
        n = images.shape[0]
        cond = self.conditioning.condition(r.classes, r.prompts, n)
        z0 = self.codec.encode(images)
        s = self._sampler("ddim", r.steps)
        with torch.no_grad():
            inv = ddim_invert(self.model_fn, s, z0, num_steps=r.steps, cond=cond,
                              fixed_point_iters=r.fixed_point_iters, callback=callback)
        nulls = None
        if r.null_optimization:  # fit the guided reconstruction: per-step unconditional inputs
            fcond = self.conditioning.as_float(cond)
            ninv = null_condition_inversion(self.model_fn, s, z0, num_steps=r.steps, cond=fcond,
                                            null_cond=self.conditioning.null_start(n), scale=r.guidance,
                                            inner_steps=r.null_inner_steps, lr=r.null_lr, inversion=inv,
                                            callback=callback)
            cond, g, nulls = fcond, ninv.guidance(), torch.stack(ninv.null_conds)
        else:
            g = self.conditioning.guidance(r.guidance, cond)
        with torch.no_grad():
            zr = reconstruct(self.model_fn, s, inv, cond=cond, guidance=g, callback=callback)
        return inversion_result(self.codec, images, z0, inv.x_T, zr, null_embeddings=nulls)

    @torch.no_grad()
    def reconstruct(self, x_T: torch.Tensor, classes: Sequence[ClassSpec] | None = None, steps: int = 50,
                    guidance: float = 1.0, null_embeddings: torch.Tensor | None = None,
                    prompts: Sequence[str] | None = None) -> torch.Tensor:
        """Replay an inversion: DDIM-sample from a saved x_T (B, c, h, w) on the `steps`-step grid under
        the same classes/prompts and guidance → decoded images (B, C, H, W) in [-1, 1].

        null_embeddings: `InversionResult.null_embeddings` (or the file `ldm invert --null-opt` writes),
        (steps, B, ...): the per-step unconditional inputs of null-condition inversion. Without them a
        guided replay is the plain guided reconstruction.
        """
        c, down = self.net.cfg.in_channels, self.pixel_step // self.f
        if x_T.ndim != 4 or x_T.shape[1] != c or x_T.shape[2] % down or x_T.shape[3] % down:
            raise ValueError(f"x_T must be (B, {c}, h, w) with h and w multiples of {down}, got {tuple(x_T.shape)}")
        x_T = x_T.to(self.device).float()
        n = x_T.shape[0]
        cond = self.conditioning.condition(classes, prompts, n)
        s = self._sampler("ddim", steps)
        if null_embeddings is None:
            g = self.conditioning.guidance(guidance, cond)
        else:
            if cond is None or guidance == 1.0:
                raise ValueError("null_embeddings only apply to a conditional model with guidance != 1 "
                                 "(pass the guidance the inversion used)")
            cond = self.conditioning.as_float(cond)
            nulls = null_embeddings.to(self.device).float()
            if nulls.shape[0] != steps or tuple(nulls.shape[2:]) != tuple(cond.shape[1:]) or nulls.shape[1] not in (1, n):
                raise ValueError(f"null_embeddings must be (steps={steps}, {n}, {', '.join(map(str, cond.shape[1:]))}), "
                                 f"got {tuple(nulls.shape)}")
            g = Guidance(scale=guidance, null_cond=list(nulls.unbind(0)))
        z = sample(self.model_fn, s, x_T.shape, num_steps=steps, cond=cond, guidance=g, x_T=x_T)
        return self.codec.decode(z).clamp(-1, 1)

    # ---- editing ---------------------------------------------------------------------------
    @torch.no_grad()
    def edit(self, images: torch.Tensor, source_class: ClassSpec | None = None, target_class: ClassSpec | None = None,
             steps: int = 50, keep_steps: int | None = None, guidance: float = 1.0,
             source_prompt: str | None = None, target_prompt: str | None = None,
             callback: StepCallback | None = None) -> torch.Tensor:
        """Invert under the source condition, regenerate under the target condition; the first
        `keep_steps` steps (default: a fifth of them) follow the source to keep the layout.

        Class models: source_class and target_class. Text models: target_prompt, and source_prompt
        (a caption of the input; default "" — the empty prompt, i.e. unconditional inversion).
        """
        r = EditRequest(source_class, target_class, steps, keep_steps, guidance, source_prompt,
                        target_prompt).check(kind=self.conditioning.kind)
        images = self.check_images(images)
        n = images.shape[0]
        if r.target_prompt is not None:
            src = self.conditioning.condition(None, per_image(r.source_prompt or "", n, "source_prompt", "prompt"), n)
            tgt = self.conditioning.condition(None, per_image(r.target_prompt, n, "target_prompt", "prompt"), n)
        else:
            src, tgt = (self.conditioning.class_ids([c] * n, n) for c in (r.source_class, r.target_class))
        keep = r.steps // 5 if r.keep_steps is None else r.keep_steps
        z0 = self.codec.encode(images)
        z = class_edit(self.model_fn, self._sampler("ddim", r.steps), z0, num_steps=r.steps, source_cond=src,
                       target_cond=tgt, keep_steps=keep, guidance=self.conditioning.guidance(r.guidance, tgt), callback=callback)
        return self.codec.decode(z).clamp(-1, 1)

    @torch.no_grad()
    def sdedit(self, images: torch.Tensor, strength: float = 0.6, target_class: ClassSpec | None = None,
               steps: int = 50, guidance: float = 1.0, seed: int = 0,
               target_prompt: str | Sequence[str] | None = None,
               callback: StepCallback | None = None) -> torch.Tensor:
        """SDEdit towards target_class (class models) or target_prompt (text models; one prompt or one
        per image); neither: unconditional."""
        r = SDEditRequest(strength, target_class, steps, guidance, seed, target_prompt).check()
        images = self.check_images(images)
        n = images.shape[0]
        cond = self.conditioning.condition(None if r.target_class is None else [r.target_class] * n,
                                           per_image(r.target_prompt, n, "target_prompt", "prompt"), n)
        z0 = self.codec.encode(images)
        gen = torch.Generator(device="cpu").manual_seed(r.seed)
        z = sdedit(self.model_fn, self._sampler("ddim", r.steps), z0, num_steps=r.steps, strength=r.strength,
                   cond=cond, guidance=self.conditioning.guidance(r.guidance, cond), generator=gen, callback=callback)
        return self.codec.decode(z).clamp(-1, 1)

    @torch.no_grad()
    def interpolate(self, image_a: torch.Tensor, image_b: torch.Tensor, num: int = 8, steps: int = 50,
                    classes: Sequence[ClassSpec] | None = None, prompts: str | Sequence[str] | None = None,
                    callback: StepCallback | None = None) -> torch.Tensor:
        """Invert both images, slerp their x_T, decode every point: (num, C, H, W).

        classes: one per image (class models); prompts: one for both or one per image (text models).
        The condition is blended linearly along the path (class embeddings or prompt states)."""
        r = InterpolateRequest(num, steps, classes, prompts).check()
        if image_a.shape != image_b.shape:
            raise ValueError(f"the two images must have one shape, got {tuple(image_a.shape)} and {tuple(image_b.shape)}")
        images = self.check_images(torch.cat([image_a, image_b]))
        cond = self.conditioning.condition(r.classes, per_image(r.prompts, 2, "prompts", "prompt"), 2)
        z0 = self.codec.encode(images)
        s = self._sampler("ddim", r.steps)
        xT = ddim_invert(self.model_fn, s, z0, num_steps=r.steps, cond=cond, callback=callback).x_T
        alphas = torch.linspace(0, 1, r.num, dtype=torch.float64)
        xs = torch.cat([slerp(xT[:1], xT[1:], float(a)) for a in alphas]).to(xT.dtype)
        c = None
        if cond is not None:  # blend the two class embeddings (or prompt states) linearly along the path
            e = self.conditioning.as_float(cond)
            c = torch.stack([(1 - float(a)) * e[0] + float(a) * e[1] for a in alphas])
        z = sample(self.model_fn, s, xs.shape, num_steps=r.steps, cond=c, x_T=xs, callback=callback)
        return self.codec.decode(z).clamp(-1, 1)


def stack_images(loaded: Sequence[LoadedImage], paths: Sequence[str | Path]) -> torch.Tensor:
    """`LoadedImage`s of one shape → (B, C, H, W); several shapes are a one-line error naming them."""
    shapes = {im.size for im in loaded}
    if len(shapes) > 1:
        named = ", ".join(f"{Path(p).name} {w}x{h}" for p, (w, h) in zip(paths, (im.size for im in loaded)))
        raise ValueError(f"the images keep their shapes and these differ ({named}); give one height and width "
                         "for all of them, or load them one by one")
    return torch.cat([im.tensor for im in loaded])


__all__ = ["InversionResult", "LDMPipeline", "stack_images"]
