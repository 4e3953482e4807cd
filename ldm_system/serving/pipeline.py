"""The Python API of a trained model (an `ldm export` folder).

    pipe = LDMPipeline.from_pretrained("outputs/demo/model")
    images = pipe.sample(8, classes=["Sneaker"] * 8, steps=50, guidance=3.0, seed=0)   # (8, C, H, W) in [-1, 1]
    images = text_pipe.sample(2, prompts=["Sneaker", "Bag"], guidance=3.0)             # text models
    inv = pipe.invert(images, classes=..., steps=50)                                   # x_T + reconstruction + PSNR
    inv = text_pipe.invert(images, prompts=["Sneaker", "Bag"], guidance=3.0, null_optimization=True)  # null-text
    again = pipe.reconstruct(inv.x_T, prompts=[...], steps=50, guidance=3.0, null_embeddings=inv.null_embeddings)
    edited = pipe.edit(image, source_class="Sneaker", target_class="Sandal", keep_steps=20)
    edited = text_pipe.edit(image, source_prompt="Sneaker", target_prompt="Sandal", keep_steps=20)
    frames = pipe.interpolate(img_a, img_b, num=8)                                     # classes= / prompts=

Everything here composes `ldm_system.diffusion` functions with the UNet (`Denoiser`) and the
frozen stage-1 codec; the denoising loops live in `ldm_system/diffusion/`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ldm_system.config import from_dict
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.diffusion.editing import class_edit, sdedit, slerp
from ldm_system.diffusion.guidance import Guidance
from ldm_system.diffusion.inversion import ddim_invert, latent_mse, reconstruct
from ldm_system.diffusion.loop import sample
from ldm_system.diffusion.null_inversion import null_condition_inversion
from ldm_system.diffusion.samplers import SamplerConfig, make_sampler
from ldm_system.models.conditioning import ClassSpec, Conditioning, per_image
from ldm_system.models.latent import LatentCodec
from ldm_system.models.text import TextEncoder, check_cross_attention_dim
from ldm_system.models.unet import Denoiser, UNetConfig
from ldm_system.serving.export import LDM_META


@dataclass(frozen=True)
class InversionResult:
    x_T: torch.Tensor  # (B, c, h, w) inverted noise
    latents: torch.Tensor  # (B, c, h, w) encoded input (scaled)
    recon_latents: torch.Tensor
    images: torch.Tensor  # the input as seen by the model (B, C, H, W), [-1, 1]
    reconstruction: torch.Tensor  # decoded reconstruction, [-1, 1]
    psnr: list[float]  # dB, per image, on [0, 1]
    ssim: list[float]
    latent_mse: list[float]
    # null-condition inversion only: the fitted unconditional input of every sampling step, stacked
    # (steps, B, E) for class models (class-embedding vectors) or (steps, B, L, D) for text models
    # (null-text states). Replay: `pipe.reconstruct(x_T, ..., guidance=g, null_embeddings=...)`.
    null_embeddings: torch.Tensor | None = None


class LDMPipeline:
    def __init__(self, denoiser: Denoiser, codec: LatentCodec, diffusion: DiffusionConfig,
                 classes: Sequence[str] = (), image_size: int | None = None, image_channels: int | None = None,
                 text: TextEncoder | None = None) -> None:
        self.net = denoiser.eval().requires_grad_(False)
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
        self.image_channels = image_channels or (u.in_channels if codec.is_identity else codec.ae.cfg.in_channels)

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "LDMPipeline":
        from diffusers import UNet2DConditionModel, UNet2DModel

        path = Path(path)
        meta_file = path / LDM_META
        if not meta_file.exists():
            raise FileNotFoundError(f"{path} is not an exported ldm-system model (no {LDM_META}); run `ldm export` first")
        meta = json.loads(meta_file.read_text())
        ucfg = from_dict(UNetConfig, meta["unet"], source=str(meta_file), where="unet")
        dcfg = from_dict(DiffusionConfig, meta["diffusion"], source=str(meta_file), where="diffusion")
        kind = UNet2DConditionModel if ucfg.conditioning == "text" else UNet2DModel
        unet = kind.from_pretrained(str(path / "unet"))
        codec = LatentCodec.from_checkpoint(path / "autoencoder", sample_posterior=False) if meta.get("has_autoencoder") else LatentCodec.identity()
        if abs(codec.scale - float(meta["latent_scale"])) > 1e-6 * max(1.0, codec.scale):
            raise ValueError(f"{path}: latent scale in {LDM_META} ({meta['latent_scale']}) differs from the autoencoder's ({codec.scale})")
        text = None
        if ucfg.conditioning == "text":
            if not meta.get("text_encoder"):
                raise ValueError(f"{path}: a text-conditioned model without a text encoder in {LDM_META}; re-export it")
            text = TextEncoder.from_pretrained(path, int(meta["text_encoder"]["max_length"])).to(device)
        den = Denoiser(ucfg, unet).to(device)
        codec.to(device)
        return cls(den, codec, dcfg, meta.get("classes", []), text=text)

    # ---- helpers ---------------------------------------------------------------------------
    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond):
        return self.net(x, t, cond)

    def class_ids(self, classes: Sequence[ClassSpec] | None, n: int) -> torch.Tensor | None:
        return self.conditioning.class_ids(classes, n)

    def _sampler(self, name: str, steps: int, eta: float = 0.0, spacing: str | None = None):
        if steps <= 0:
            raise ValueError(f"steps must be positive, got {steps}")
        return make_sampler(SamplerConfig(name=name, num_steps=steps, eta=eta, spacing=spacing), self.schedule,
                            self.diffusion.prediction_type)

    def _guidance(self, scale: float, cond) -> Guidance | None:
        return self.conditioning.guidance(scale, cond)

    def latent_shape(self, n: int) -> tuple[int, int, int, int]:
        u = self.net.cfg
        return (n, u.in_channels, u.sample_size, u.sample_size)

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        want = (self.image_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"images must be (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(images.shape)}; "
                             "load files with ldm_system.images.load_image (resize + centre crop)")
        return images.to(self.device).float()

    def load_images(self, paths: Sequence[str | Path]) -> torch.Tensor:
        from ldm_system.images import load_image

        return torch.cat([load_image(p, self.image_size, self.image_channels) for p in paths]).to(self.device)

    # ---- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num: int, classes: Sequence[ClassSpec] | None = None, sampler: str = "ddim", steps: int = 50,
               eta: float = 0.0, guidance: float = 1.0, seed: int = 0, progress: bool = False,
               prompts: Sequence[str] | None = None) -> torch.Tensor:
        if num <= 0:
            raise ValueError(f"num must be positive, got {num}")
        cond = self.conditioning.condition(classes, prompts, num)
        s = self._sampler(sampler, steps, eta)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        z = sample(self.model_fn, s, self.latent_shape(num), num_steps=steps, cond=cond,
                   guidance=self._guidance(guidance, cond), generator=gen, device=self.device, progress=progress)
        return self.codec.decode(z).clamp(-1, 1)

    # ---- inversion -------------------------------------------------------------------------
    def invert(self, images: torch.Tensor, classes: Sequence[ClassSpec] | None = None, steps: int = 50,
               fixed_point_iters: int = 0, guidance: float = 1.0, null_optimization: bool = False,
               null_inner_steps: int = 10, null_lr: float = 0.05,
               prompts: Sequence[str] | None = None) -> InversionResult:
        """DDIM inversion → x_T, then DDIM reconstruction on the same grid; reports PSNR/SSIM/latent MSE.

        classes (class models) or prompts (text models, one per image; none: the empty prompt)
        condition both passes. With guidance > 1, plain inversion reconstructs under guidance (which
        drifts) unless `null_optimization` fits per-step unconditional inputs: null-class embeddings
        for class models, null-text states for text models (Mokady et al. 2022); they are returned
        in `InversionResult.null_embeddings`.
        """
        images = self.check_images(images)
        n = images.shape[0]
        cond = self.conditioning.condition(classes, prompts, n)
        if null_optimization and (cond is None or guidance == 1.0 or (classes is None and prompts is None)):
            raise ValueError("null-condition inversion needs a conditional model, classes (class models) or "
                             "prompts (text models), and guidance != 1")
        z0 = self.codec.encode(images)
        s = self._sampler("ddim", steps)
        with torch.no_grad():
            inv = ddim_invert(self.model_fn, s, z0, num_steps=steps, cond=cond, fixed_point_iters=fixed_point_iters)
        if not null_optimization:
            with torch.no_grad():
                zr = reconstruct(self.model_fn, s, inv, cond=cond, guidance=self._guidance(guidance, cond))
            return self._report(images, z0, inv.x_T, zr)
        fcond = self.conditioning.as_float(cond)
        ninv = null_condition_inversion(self.model_fn, s, z0, num_steps=steps, cond=fcond,
                                        null_cond=self.conditioning.null_start(n), scale=guidance,
                                        inner_steps=null_inner_steps, lr=null_lr, inversion=inv)
        with torch.no_grad():
            zr = reconstruct(self.model_fn, s, inv, cond=fcond, guidance=ninv.guidance())
        return self._report(images, z0, inv.x_T, zr, null_embeddings=torch.stack(ninv.null_conds))

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
        want = tuple(self.latent_shape(1)[1:])
        if x_T.ndim != 4 or tuple(x_T.shape[1:]) != want:
            raise ValueError(f"x_T must be (B, {', '.join(map(str, want))}), got {tuple(x_T.shape)}")
        x_T = x_T.to(self.device).float()
        n = x_T.shape[0]
        cond = self.conditioning.condition(classes, prompts, n)
        s = self._sampler("ddim", steps)
        if null_embeddings is None:
            g = self._guidance(guidance, cond)
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

    @torch.no_grad()
    def _report(self, images, z0, x_T, zr, null_embeddings=None) -> InversionResult:
        from ldm_system.eval.metrics import psnr, ssim

        rec = self.codec.decode(zr).clamp(-1, 1)
        a, b = (images + 1) / 2, (rec + 1) / 2
        return InversionResult(
            x_T=x_T, latents=z0, recon_latents=zr, images=images, reconstruction=rec,
            psnr=[float(v) for v in psnr(b, a).reshape(-1)], ssim=[float(v) for v in ssim(b, a).reshape(-1)],
            latent_mse=[float(v) for v in latent_mse(zr, z0)], null_embeddings=null_embeddings,
        )

    # ---- editing ---------------------------------------------------------------------------
    @torch.no_grad()
    def edit(self, images: torch.Tensor, source_class: ClassSpec | None = None, target_class: ClassSpec | None = None,
             steps: int = 50, keep_steps: int | None = None, guidance: float = 1.0,
             source_prompt: str | None = None, target_prompt: str | None = None) -> torch.Tensor:
        """Invert under the source condition, regenerate under the target condition; the first
        `keep_steps` steps (default: a fifth of them) follow the source to keep the layout.

        Class models: source_class and target_class. Text models: target_prompt, and source_prompt
        (a caption of the input; default "" — the empty prompt, i.e. unconditional inversion).
        """
        images = self.check_images(images)
        n = images.shape[0]
        kind = self.net.cfg.conditioning
        given_class = source_class is not None or target_class is not None
        given_prompt = source_prompt is not None or target_prompt is not None
        if given_class and given_prompt:
            raise ValueError("give source/target classes (class-conditional models) or source/target prompts "
                             "(text-conditioned models), not both")
        if kind == "text":
            if given_class:
                raise ValueError("this model is text-conditional; edit with source_prompt/target_prompt, not classes")
            if target_prompt is None:
                raise ValueError("a text edit needs target_prompt (source_prompt defaults to '', the empty prompt)")
            src = self.conditioning.condition(None, per_image(source_prompt or "", n, "source_prompt", "prompt"), n)
            tgt = self.conditioning.condition(None, per_image(target_prompt, n, "target_prompt", "prompt"), n)
        elif kind == "class":
            if given_prompt:
                raise ValueError("this model is not text-conditional; edit with source_class/target_class, not prompts")
            if source_class is None or target_class is None:
                raise ValueError("a class edit needs source_class and target_class")
            src, tgt = self.conditioning.class_ids([source_class] * n, n), self.conditioning.class_ids([target_class] * n, n)
        else:
            raise ValueError("edits need a class- or text-conditional model (this one is unconditional; try sdedit)")
        keep = steps // 5 if keep_steps is None else keep_steps
        z0 = self.codec.encode(images)
        z = class_edit(self.model_fn, self._sampler("ddim", steps), z0, num_steps=steps, source_cond=src,
                       target_cond=tgt, keep_steps=keep, guidance=self._guidance(guidance, tgt))
        return self.codec.decode(z).clamp(-1, 1)

    @torch.no_grad()
    def sdedit(self, images: torch.Tensor, strength: float = 0.6, target_class: ClassSpec | None = None,
               steps: int = 50, guidance: float = 1.0, seed: int = 0,
               target_prompt: str | Sequence[str] | None = None) -> torch.Tensor:
        """SDEdit towards target_class (class models) or target_prompt (text models; one prompt or one
        per image); neither: unconditional."""
        images = self.check_images(images)
        n = images.shape[0]
        cond = self.conditioning.condition(None if target_class is None else [target_class] * n,
                              per_image(target_prompt, n, "target_prompt", "prompt"), n)
        z0 = self.codec.encode(images)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        z = sdedit(self.model_fn, self._sampler("ddim", steps), z0, num_steps=steps, strength=strength, cond=cond,
                   guidance=self._guidance(guidance, cond), generator=gen)
        return self.codec.decode(z).clamp(-1, 1)

    @torch.no_grad()
    def interpolate(self, image_a: torch.Tensor, image_b: torch.Tensor, num: int = 8, steps: int = 50,
                    classes: Sequence[ClassSpec] | None = None,
                    prompts: str | Sequence[str] | None = None) -> torch.Tensor:
        """Invert both images, slerp their x_T, decode every point: (num, C, H, W).

        classes: one per image (class models); prompts: one for both or one per image (text models).
        The condition is blended linearly along the path (class embeddings or prompt states)."""
        if num < 2:
            raise ValueError(f"num must be at least 2, got {num}")
        images = self.check_images(torch.cat([image_a, image_b]))
        cond = self.conditioning.condition(classes, per_image(prompts, 2, "prompts", "prompt"), 2)
        z0 = self.codec.encode(images)
        s = self._sampler("ddim", steps)
        xT = ddim_invert(self.model_fn, s, z0, num_steps=steps, cond=cond).x_T
        alphas = torch.linspace(0, 1, num, dtype=torch.float64)
        xs = torch.cat([slerp(xT[:1], xT[1:], float(a)) for a in alphas]).to(xT.dtype)
        c = None
        if cond is not None:  # blend the two class embeddings (or prompt states) linearly along the path
            e = self.conditioning.as_float(cond)
            c = torch.stack([(1 - float(a)) * e[0] + float(a) * e[1] for a in alphas])
        z = sample(self.model_fn, s, xs.shape, num_steps=steps, cond=c, x_T=xs)
        return self.codec.decode(z).clamp(-1, 1)
