"""ldm-system: two-stage latent diffusion training."""
__version__ = "0.1.0"
