"""Class-conditional latent diffusion for stock diffusers, shipped inside an `ldm export` folder:

    pipe = DiffusionPipeline.from_pretrained(OUT, custom_pipeline=OUT)   # OUT/pipeline.py is this file
    images = pipe(class_labels=[0, 3], guidance_scale=2.0, num_inference_steps=50,
                  generator=torch.Generator().manual_seed(0), output_type="np").images

The UNet's class table has one row per class plus a last "null" row (the condition dropped in
training); guidance mixes the two outputs as ε̃ = u + s (c − u) (Ho & Salimans 2022, eq. 6).
It imports only torch and diffusers.
"""
from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class ClassConditionalLDMPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "unet->vqvae"
    _optional_components = ["vqvae"]

    def __init__(self, unet, scheduler, vqvae=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vqvae=vqvae)

    @torch.no_grad()
    def __call__(self, class_labels, guidance_scale: float = 1.0, num_inference_steps: int = 50, eta: float = 0.0,
                 generator=None, latents=None, output_type: str = "pil", return_dict: bool = True):
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=self.device).reshape(-1)  # (B,)
        null = self.unet.config.num_class_embeds - 1
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        if latents is None:
            latents = randn_tensor((len(labels), c, s, s), generator=generator, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps)
        guided = guidance_scale != 1.0
        both = torch.cat([labels, torch.full_like(labels, null)]) if guided else labels
        for t in self.progress_bar(self.scheduler.timesteps):
            x = torch.cat([latents, latents]) if guided else latents
            x = self.scheduler.scale_model_input(x, t)
            out = self.unet(x, t.expand(x.shape[0]), class_labels=both).sample
            if guided:
                cond, uncond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(out, t, latents, eta=eta, generator=generator).prev_sample
        if self.vqvae is not None:
            latents = self.vqvae.decode(latents / self.vqvae.config.scaling_factor).sample
        image = (latents / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        return ImagePipelineOutput(images=image) if return_dict else (image,)
