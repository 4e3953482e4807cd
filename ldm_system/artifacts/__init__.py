"""The model-artifact layer: every folder kind we read or write, and one loader per kind.

    detect(path) -> Kind                    kinds.py (the marker files; imports nothing of ours)
    CHECKPOINT / RUN   read_stage2          checkpoints.py
    EXPORT, DIFFUSERS_PIPELINE  load_exported_ldm   exported.py
    DIFFUSERS_MODEL (UNet)      read_unet_folder    diffusers_unet.py
    STAGE1, DIFFUSERS_MODEL (AutoencoderKL/VQModel) autoencoders.io.load_autoencoder;
                                with the latent scales (mode, sample; measured when missing) load_stage1  latent_scale.py
    BASELINE                    ldm_system.baselines.registry (family loaders)

It sits at the bottom of `ldm_system`: models, diffusion configs and `autoencoders` below it;
training, export, serving and evaluation above. Submodules are imported where used (torch-free CLI).
"""
from ldm_system.artifacts.kinds import Kind, UnknownArtifactError, detect, resolve_checkpoint

__all__ = ["Kind", "UnknownArtifactError", "detect", "resolve_checkpoint"]
