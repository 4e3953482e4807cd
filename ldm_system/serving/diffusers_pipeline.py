"""Which stock diffusers pipeline an export becomes, and its `model_index.json`.

    conditioning  stage 1        pipeline (diffusers 0.42)
    text          KL (vae/)      StableDiffusionPipeline, no safety checker, requires_safety_checker=False
    none          KL or VQ       LDMPipeline (unet, vqvae, scheduler): decodes `latents / scaling_factor`
    none          none (pixels)  DDIMPipeline (unet, scheduler)
    class         any            ClassConditionalLDMPipeline: OUT/pipeline.py, loaded with `custom_pipeline=OUT`

Other combinations (text in pixel space or on a VQ model: StableDiffusionPipeline decodes with a KL
`vae`) get no model_index.json; the export says why in ldm.json. The scheduler is always a
`DDIMScheduler` with our forward process; text exports use `steps_offset=1`, because
StableDiffusionPipeline rewrites any other value, and `ldm sample` reads the same offset back.
"""
from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from ldm_system.artifacts.kinds import MODEL_INDEX
from ldm_system.artifacts.scheduler import SamplingGrid
from ldm_system.models.unet import UNetConfig, diffusers_unet_kwargs

CUSTOM_PIPELINE = "ClassConditionalLDMPipeline"
_NONE = [None, None]


def sampling_grid(unet: UNetConfig) -> SamplingGrid:
    return SamplingGrid("leading", 1 if unet.conditioning == "text" else 0)


def _index(cls: str, **parts) -> dict:
    import diffusers

    return {"_class_name": cls, "_diffusers_version": diffusers.__version__, **parts}


def write_model_index(out: Path, unet: UNetConfig, ae_kind: str | None, ae_note: str = "") -> tuple[str | None, str]:
    """Write OUT/model_index.json (and OUT/pipeline.py for class models). Returns (pipeline class, "")
    or (None, the reason no stock pipeline represents this model)."""
    unet_cls = diffusers_unet_kwargs(unet)[0]
    sched = ["diffusers", "DDIMScheduler"]
    if ae_note:
        return None, ae_note
    stage1 = {"kl": ["diffusers", "AutoencoderKL"], "vq": ["diffusers", "VQModel"]}.get(ae_kind or "")
    if unet.conditioning == "text":
        if ae_kind != "kl":
            return None, ("StableDiffusionPipeline decodes with a KL autoencoder (vae/); this text model runs "
                          f"{'in pixel space' if ae_kind is None else 'on a VQ autoencoder'}")
        index = _index("StableDiffusionPipeline", vae=stage1, text_encoder=["transformers", "CLIPTextModel"],
                       tokenizer=["transformers", "CLIPTokenizer"], unet=["diffusers", unet_cls], scheduler=sched,
                       safety_checker=_NONE, feature_extractor=_NONE, image_encoder=_NONE,
                       requires_safety_checker=False)
    elif unet.conditioning == "class":
        shutil.copyfile(str(resources.files("ldm_system.serving.shipped") / "class_conditional_pipeline.py"),
                        out / "pipeline.py")
        index = _index(CUSTOM_PIPELINE, unet=["diffusers", unet_cls], scheduler=sched, vqvae=stage1 or _NONE)
    elif ae_kind is None:
        index = _index("DDIMPipeline", unet=["diffusers", unet_cls], scheduler=sched)
    else:
        index = _index("LDMPipeline", vqvae=stage1, unet=["diffusers", unet_cls], scheduler=sched)
    # LDMPipeline and ours read the stage-1 model from vqvae/ whatever its class; the KL twin lives in vae/.
    if index.get("vqvae") == ["diffusers", "AutoencoderKL"] and not (out / "vqvae").exists():
        shutil.copytree(out / "vae", out / "vqvae")
    (out / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index["_class_name"], ""


__all__ = ["CUSTOM_PIPELINE", "sampling_grid", "write_model_index"]
