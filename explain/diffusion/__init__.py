"""Diffusion: pipelines, their geometry, and the maths of the forward chain.

- :mod:`.loading`: load a diffusers pipeline (embedded model, local directory, Hub id), schedulers, model facts.
- :mod:`.geometry`: :class:`~explain.diffusion.geometry.Geometry`, sizes, multiples, VAE factor, attn2 layers.
- :mod:`.noising`: q(x_t | x_{t-1}), q(x_t | x_0), ᾱ and SNR curves, img2img's strength on the chain.
- :mod:`.latents`: pixels <-> the VAE latents the chain runs on.
- :mod:`.steps`: :class:`~explain.diffusion.steps.StepPlan`, which denoising step each U-Net call belongs to.
- :mod:`.markov`: the toy two-state weather chain that introduces Markov chains.
"""
