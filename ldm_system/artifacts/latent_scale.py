"""The latent scales of a stage-1 folder, as `ldm data encode` and stage 2 use them.

A diffusion model should see latents of unit std: z · s with s = 1/std(z), measured on *what it
trains on* (LDM sec. 4.3). For a KL autoencoder that is either the posterior mode (`latent.npy`, the
default) or posterior samples (`data.sample_posterior: true`); an under-trained one has a posterior
variance far above the spread of its means, so the two scales differ a lot. Hence two scales:

    mode    1/std of the posterior mean (VQ: of the pre-quantization latents); `latent.npy` holds z·mode
    sample  KL only: 1/std of posterior samples; stage 2 with sample_posterior uses it

Our autoencoders store both (autoencoder.json, measured after stage 1). A diffusers folder gives one
`scaling_factor`, used for both, except that it is measured on the caller's images (mode and samples)
when the config has none, or has diffusers' default 0.18215 and the latents scaled by it have a std
outside [1/TOLERANCE, TOLERANCE] (a VAE saved with the constructor's default, never measured). Any
other value is the folder's own choice and is kept.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger("ldm_system")

DIFFUSERS_DEFAULT = 0.18215  # AutoencoderKL's constructor default, written by every save_pretrained
TOLERANCE = 1.25  # scaled latents with a std outside [0.8, 1.25] are badly scaled
PROBE_BATCHES = 8


@dataclass(frozen=True)
class LatentScales:
    mode: float
    sample: float | None = None  # None: the mode's scale serves for samples too
    measured: bool = False  # measured on the data here, not stored with the autoencoder

    def for_posterior(self, sample_posterior: bool) -> float:
        """The scale that gives unit std to what stage 2 trains on."""
        return self.sample if sample_posterior and self.sample else self.mode

    def manifest_meta(self) -> dict[str, Any]:
        """The manifest keys `ldm data encode` writes (latent.npy holds z · latent_scale)."""
        return {"latent_scale": self.mode, **({"sample_latent_scale": self.sample} if self.sample else {}),
                "latent_scale_measured": self.measured}

    @classmethod
    def of_manifest(cls, meta: dict[str, Any]) -> "LatentScales":
        sample = meta.get("sample_latent_scale")
        return cls(float(meta["latent_scale"]), float(sample) if sample else None, bool(meta.get("latent_scale_measured")))


def fits(std: float) -> bool:
    return 1.0 / TOLERANCE <= std <= TOLERANCE


def load_stage1(path: str | Path, images: Callable[[], Iterable], device: str = "cpu",
                batches: int = PROBE_BATCHES) -> tuple[Any, Any, LatentScales]:
    """(autoencoder, its meta with the scales below, LatentScales) for any stage-1 folder;
    `images()` gives a fresh iterator of image batches to measure on (read only when needed)."""
    from autoencoders.factory import measure_latent_scales
    from autoencoders.io import META_FILE, load_autoencoder, stage1_folder

    measured: dict[str, float] = {}

    def measure(ae) -> float:
        measured.update(measure_latent_scales(ae, images(), max_batches=batches))
        return measured["mode"]

    ae, meta = load_autoencoder(path, device=device, scale_from=measure)
    if (stage1_folder(path) / META_FILE).is_file():
        return ae, meta, LatentScales(meta.latent_scale, meta.sample_latent_scale)
    if not measured and abs(meta.latent_scale - DIFFUSERS_DEFAULT) < 1e-9:
        probe = measure_latent_scales(ae, images(), max_batches=batches)
        std = meta.latent_scale / probe["mode"]  # std of z · scaling_factor
        if not fits(std):
            log.warning(f"{path}: scaling_factor {DIFFUSERS_DEFAULT} (diffusers' default) gives latents of std "
                        f"{std:.3g} on these images; using the measured scale {probe['mode']:.5g} instead")
            measured.update(probe)
    if not measured:
        return ae, meta, LatentScales(meta.latent_scale)
    scales = LatentScales(measured["mode"], measured.get("sample"), measured=True)
    return ae, dataclasses.replace(meta, latent_scale=scales.mode, sample_latent_scale=scales.sample), scales


__all__ = ["DIFFUSERS_DEFAULT", "LatentScales", "TOLERANCE", "fits", "load_stage1"]
