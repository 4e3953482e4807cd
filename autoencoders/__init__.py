"""Stage 1 of ldm-system: KL and VQ autoencoders, PatchGAN discriminator, perceptual and
adversarial losses, and the stage-1 training task. Part of the `ldm-system` distribution; never
imports `ldm_system` (the engine plugs `autoencoders.stage1.Stage1Task` in by duck typing).

    config.py         frozen configs + PRESETS          factory.py   build_autoencoder, measure_latent_scale
    kl.py / vq.py     the two model kinds               quantizer.py VectorQuantizer (EMA, l2, restarts)
    discriminator.py  PatchDiscriminator                losses.py    loss terms, adaptive weight, R1, LeCam
    effnet.py         EfficientNet-Lite0 (offline)      perceptual.py effnet-lite0 / lpips-vgg distances
    stage1.py         Stage1Task                         io.py        checkpoints + diffusers export
    adversarial.py    the D/G game shared with ldm_system's GAN baseline (frozen D for the G step)
"""
