"""Tab 2, Forward noising: the toy weather chain, then an image dissolving on the fixed chain of T Gaussian steps."""

from __future__ import annotations

import threading
from typing import NamedTuple

import gradio as gr
import numpy as np
import torch
from PIL import Image

from demo.common import (
    MODEL_CONCURRENCY,
    PLOT_FORMAT,
    explain,
    export_dir,
    lesson,
    open_image,
    seed_input,
    user_errors,
)
from explain.diffusion.geometry import Geometry
from explain.diffusion.latents import pixel_and_latent_chains, rgb_to_pixels
from explain.diffusion.markov import WeatherChain
from explain.diffusion.noising import ForwardSchedule, strength_to_start_step
from explain.engine.requests import MAX_STEPS
from explain.io.figures import markov_figure, noising_strip_figure, pixels_to_rgb, schedule_figure
from explain.io.formats import captioned_pair, write_gif

__all__ = ["NoiseTab", "Markov", "Noised", "Strength", "Opened"]

MAX_MARKOV_T = 60
MAX_PATHS = 1000
MAX_NOISE_SIDE = 256  # uploads are shrunk so the longer side is at most this (and the model's default size)
STRIP_FRACTIONS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)  # strip columns as fractions of the chain
ANIMATION_FRAMES = 24
ANIMATION_TILE = 192  # pixels per side of one GIF tile
ANIMATION_MS = 160
SOURCES = ("world sample", "upload")
CACHE_ENTRIES = 16


class Markov(NamedTuple):
    """The weather chain: sampled paths and per-day distribution (figure), and what they show."""

    figure: object
    text: str


class Noised(NamedTuple):
    """An image on the forward chain: the strip (step by step vs closed form), the schedule, and what t means."""

    strip: object
    schedule: object
    text: str


class Strength(NamedTuple):
    """img2img's strength as a start point: what runs, and the schedule with the start marked."""

    text: str
    figure: object


class Opened(NamedTuple):
    """The tab's first views (:meth:`NoiseTab.on_open`), and the flag that it has opened."""

    markov: object
    markov_text: str
    strip: object
    schedule: object
    noise_text: str
    strength_text: str
    strength: object
    opened: bool


def _uint8(x: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> uint8."""
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


class NoiseTab:
    """Handlers and layout of the forward-noising tab."""

    def __init__(self, engine):
        self.engine = engine
        self.world = engine.world()  # the world whose scenes are noised (explain.world.content)
        self._cache: dict = {}  # (world seed, timesteps, noise seed) -> frames; deterministic, so shared
        self._cache_lock = threading.Lock()

    # -- the toy chain ----------------------------------------------------------------------------------------------
    def markov(self, steps: int, n_paths: int, start: str, seed: int) -> Markov:
        """Sampled weather paths and the exact distribution per day, converging to the stationary law."""

        chain = WeatherChain()
        with user_errors():
            if not 1 <= int(steps) <= MAX_MARKOV_T:
                raise ValueError(f"T must be 1..{MAX_MARKOV_T} (got {steps})")
            if not 1 <= int(n_paths) <= MAX_PATHS:
                raise ValueError(f"paths must be 1..{MAX_PATHS} (got {n_paths})")
            paths = chain.sample_paths(int(n_paths), int(steps), start, np.random.default_rng(int(seed)))
            dist = chain.distribution_after(int(steps), start)
        pi = dist.stationary
        text = (
            f"Start: **{start}**. After T = {int(steps)} days: P(rainy) = **{dist.probs[-1, 0]:.3f}**, "
            f"P(sunny) = **{dist.probs[-1, 1]:.3f}**. Stationary π = ({pi[0]:.3f}, {pi[1]:.3f}) = (4/7, 3/7). "
            f"Distance to π shrinks ×{dist.second_eigenvalue_modulus:.1f} per day: "
            f"{dist.tv_to_stationary[0]:.3f} → {dist.tv_to_stationary[-1]:.2e}."
        )
        return Markov(markov_figure(paths, dist), text)

    # -- the image chain ----------------------------------------------------------------------------------------------
    def _image(self, source: str, world_seed: int, upload):
        """The clean image x_0 as PIL, sized for the VAE (a multiple of its factor, longer side capped)."""

        pipe = self.engine.pipeline()
        geometry = Geometry.from_pipeline(pipe, layers=False)
        default_hw, factor = geometry.default_hw, geometry.vae_factor
        if source == "upload":
            image = upload if isinstance(upload, Image.Image) else open_image(upload, "image to noise")
        elif source == "world sample":
            image = Image.fromarray(self.world.samples(1, int(world_seed), size=min(default_hw))[0].image)
        else:
            raise gr.Error(f"Unknown source {source!r}: choose one of {', '.join(SOURCES)}.")
        longest = min(MAX_NOISE_SIDE, max(default_hw))
        ratio = longest / max(image.size)
        width, height = (max(factor, round(side * ratio) // factor * factor) for side in image.size)
        return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)

    def _chains(self, image, timesteps: list[int], seed: int, key=None) -> dict[str, list[np.ndarray]]:
        """:meth:`_compute_chains`, remembered for world samples (``key``): a class opening the tab at once."""
        if key is None:
            return self._compute_chains(image, timesteps, seed)
        key = (key, tuple(timesteps), int(seed))
        with self._cache_lock:
            if key not in self._cache:
                if len(self._cache) >= CACHE_ENTRIES:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = self._compute_chains(image, timesteps, seed)
            return self._cache[key]

    def _compute_chains(self, image, timesteps: list[int], seed: int) -> dict[str, list[np.ndarray]]:
        """Per row (pixels/latents x step by step/closed form): x_0, then the frames at ``timesteps``.

        Frames are (H, W, 3) floats in [0, 1]; latent rows are decoded by the VAE (their x_0 is the VAE round trip).
        """
        pipe = self.engine.pipeline()
        schedule = ForwardSchedule.from_scheduler(pipe.scheduler)
        generator = torch.Generator().manual_seed(int(seed))
        chains = pixel_and_latent_chains(pipe.vae, rgb_to_pixels(image), schedule, timesteps, generator)
        return {f"{space}:\n{method}": list(pixels_to_rgb(batch)) for (space, method), batch in chains.items()}

    def noise_image(self, source: str, world_seed: int, upload, t: int, seed: int) -> Noised:
        """Step chain vs closed form, in pixels and in the VAE's latents, at spread timesteps and at ``t``."""

        pipe = self.engine.pipeline()
        schedule = ForwardSchedule.from_scheduler(pipe.scheduler)
        T = schedule.num_train_timesteps
        with user_errors():
            if not 0 <= int(t) < T:
                raise ValueError(f"t must lie in 0..{T - 1} (got {t})")
            image = self._image(source, world_seed, upload)
            timesteps = sorted({round(f * (T - 1)) for f in STRIP_FRACTIONS} | {int(t)})
            rows = self._chains(
                image, timesteps, seed, key=("world", int(world_seed)) if source == SOURCES[0] else None
            )
        columns = ["x₀"] + [f"t = {s}" + (" ◀" if s == int(t) else "") for s in timesteps]
        strip = noising_strip_figure(columns, rows, title="Step by step q(x_t | x_{t-1}) vs closed form q(x_t | x_0)")
        abar = float(schedule.alpha_bars[int(t)])
        text = (
            f"At **t = {int(t)}**: ᾱ_t = {abar:.4f}, so x_t = **{abar**0.5:.3f}** · x₀ + **{(1 - abar) ** 0.5:.3f}** · ε; "
            f"SNR = {float(schedule.snr[int(t)]):.3g}. Both rows of a space show the same distribution: the "
            f"{int(t) + 1} small steps add up to one big Gaussian jump."
        )
        return Noised(strip, schedule_figure(schedule, [int(t)]), text)

    def noise_animation(self, source: str, world_seed: int, upload, seed: int) -> str:
        """An animated GIF of the step-by-step chain: pixels (left) and decoded latents (right), t = 0 .. T-1."""

        schedule = ForwardSchedule.from_scheduler(self.engine.pipeline().scheduler)
        T = schedule.num_train_timesteps
        timesteps = sorted({round(k * (T - 1) / (ANIMATION_FRAMES - 1)) for k in range(ANIMATION_FRAMES)})
        with user_errors():
            key = ("world", int(world_seed)) if source == SOURCES[0] else None
            rows = self._chains(self._image(source, world_seed, upload), timesteps, seed, key=key)
        pixels, latents = rows["pixels:\nstep by step"], rows["latents:\nstep by step"]
        frames = [
            captioned_pair(_uint8(a), _uint8(b), f"t = {t}   pixels | latents (decoded)", side=ANIMATION_TILE)
            for t, a, b in zip(timesteps, pixels[1:], latents[1:], strict=True)
        ]
        path = write_gif(export_dir() / "forward_chain.gif", frames, ANIMATION_MS)
        return str(path)

    def strength(self, strength: float, steps: int) -> Strength:
        """img2img's strength as the start point on the chain, marked on the schedule."""

        pipe = self.engine.pipeline()
        with user_errors():
            start = strength_to_start_step(float(strength), int(steps), pipe.scheduler)
        schedule = ForwardSchedule.from_scheduler(pipe.scheduler)
        if start.start_timestep is None:
            text = f"strength {strength:.2f}: no step runs; img2img returns the input unchanged."
            return Strength(text, schedule_figure(schedule))
        text = (
            f"**strength {strength:.2f}** with {int(steps)} sampler steps: skip {start.t_start}, run "
            f"**{start.denoising_steps}**, starting at **t = {start.start_timestep}** where the input keeps "
            f"√ᾱ = {start.signal_coef:.3f} of its signal (noise std {start.noise_std:.3f})."
        )
        return Strength(text, schedule_figure(schedule, [start.start_timestep]))

    def on_open(self, opened: bool) -> Opened:
        """The first time the tab opens: the weather chain, a world sample at t = T/4, strength 0.6 (then: no-op)."""
        if opened:
            return Opened(*(gr.skip() for _ in Opened._fields))
        T = self.engine.limits().chain_length
        markov = self.markov(15, 200, "rainy", 0)
        noised = self.noise_image(SOURCES[0], 3, None, T // 4, 0)
        strength = self.strength(0.6, 25)
        return Opened(
            markov=markov.figure,
            markov_text=markov.text,
            strip=noised.strip,
            schedule=noised.schedule,
            noise_text=noised.text,
            strength_text=strength.text,
            strength=strength.figure,
            opened=True,
        )

    # -- layout -----------------------------------------------------------------------------------------------------
    def build(self, num_train_timesteps: int) -> tuple[list, list]:
        """Create the tab's components and events (call inside ``gr.Tab``); returns :meth:`on_open`'s in/outputs."""
        lesson("noise")
        m_plot, m_text = self._build_markov()
        n_strip, n_schedule, n_text = self._build_image_chain(num_train_timesteps)
        s_text, s_plot = self._build_strength()
        opened = gr.State(False)
        return [opened], [m_plot, m_text, n_strip, n_schedule, n_text, s_text, s_plot, opened]

    def _build_markov(self) -> tuple:
        """Section 1: the toy weather chain."""
        gr.Markdown("### 1 · A toy Markov chain: rainy or sunny?")
        with gr.Row():
            with gr.Column(scale=1):
                m_steps = gr.Slider(1, MAX_MARKOV_T, value=15, step=1, label="T (days)")
                m_paths = gr.Slider(1, MAX_PATHS, value=200, step=1, label="Sampled runs")
                m_start = gr.Radio(["rainy", "sunny"], value="rainy", label="Day 0")
                m_seed = seed_input(0, label="Seed")
                m_btn = gr.Button("Run the chain", variant="primary")
                explain(
                    "Rules: after a rainy day 70 % rain, after a sunny day 40 % rain. Left: each row is one sampled "
                    "run. Right: the share of rainy days per day. Start rainy or sunny: both settle at 4/7 rainy, "
                    "the **stationary distribution**. The start is forgotten."
                )
            with gr.Column(scale=3):
                m_plot = gr.Plot(show_label=False, label="Weather chain", format=PLOT_FORMAT)
                m_text = gr.Markdown()
        m_inputs, m_outputs = [m_steps, m_paths, m_start, m_seed], [m_plot, m_text]
        m_btn.click(self.markov, m_inputs, m_outputs, api_name="markov")
        m_steps.release(self.markov, m_inputs, m_outputs, api_visibility="undocumented")
        gr.Examples(
            [[15, 200, "rainy", 0], [15, 200, "sunny", 0], [3, 20, "rainy", 1]],
            inputs=m_inputs,
            outputs=m_outputs,
            fn=self.markov,
            cache_examples=True,
            cache_mode="lazy",
            label="Presets",
            example_labels=["start rainy", "start sunny: same limit", "3 days, 20 runs: a noisy estimate"],
        )
        return m_plot, m_text

    def _build_image_chain(self, T: int) -> tuple:
        """Section 2: an image (pixels and latents) on the forward chain, step by step and in closed form."""
        gr.Markdown(f"### 2 · The same idea on an image: T = {T} small Gaussian steps")
        with gr.Row():
            with gr.Column(scale=1):
                n_source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Image")
                n_world = seed_input(3, label="World sample seed")
                n_upload = gr.Image(
                    label="Upload (when 'upload' is chosen)",
                    type="filepath",
                    height=180,
                    sources=["upload", "clipboard"],
                )
                n_t = gr.Slider(0, T - 1, value=T // 4, step=1, label="t: how far along the chain")
                n_seed = seed_input(0, label="Noise seed")
                with gr.Row():
                    n_btn = gr.Button("Noise it", variant="primary")
                    n_anim_btn = gr.Button("▶ Animate t = 0 … T")
                explain(
                    "Top rows: pixels. Bottom rows: the VAE's latents (what Stable Diffusion really noises), decoded "
                    "to be seen. In each pair, 'step by step' applies t + 1 tiny steps; 'closed form' jumps there at "
                    "once. They look alike because they are the same distribution."
                )
            with gr.Column(scale=3):
                n_strip = gr.Plot(show_label=False, label="Forward chain", format=PLOT_FORMAT, elem_id="noise-strip")
                n_text = gr.Markdown()
        with gr.Row():
            with gr.Column(scale=3):
                n_schedule = gr.Plot(show_label=False, label="ᾱ_t and SNR", format=PLOT_FORMAT)
            with gr.Column(scale=1):
                n_anim = gr.Image(label="Animation (GIF)", type="filepath", height=260, format="gif")
                explain(
                    "ᾱ_t is the share of the image's variance left at step t; SNR = ᾱ_t / (1 − ᾱ_t). Both fall "
                    "from 1 and a large number to ~0: by the end only noise is left."
                )
        n_inputs = [n_source, n_world, n_upload, n_t, n_seed]
        n_outputs = [n_strip, n_schedule, n_text]
        n_btn.click(self.noise_image, n_inputs, n_outputs, api_name="noise_image", concurrency_id=MODEL_CONCURRENCY)
        n_t.release(
            self.noise_image, n_inputs, n_outputs, api_visibility="undocumented", concurrency_id=MODEL_CONCURRENCY
        )
        n_anim_btn.click(
            self.noise_animation,
            [n_source, n_world, n_upload, n_seed],
            [n_anim],
            api_name="noise_animation",
            concurrency_id=MODEL_CONCURRENCY,
        )
        self._image_presets(T, [n_source, n_world, n_t, n_seed], n_outputs)
        return n_strip, n_schedule, n_text

    def _image_presets(self, T: int, inputs: list, outputs: list) -> None:
        """Early, halfway and the end of the chain, on a world sample."""
        gr.Examples(
            [
                ["world sample", 3, T // 10, 0],
                ["world sample", 3, T // 2, 0],
                ["world sample", 8, T - 1, 0],
            ],
            inputs=inputs,
            outputs=outputs,
            fn=lambda source, world, t, seed: self.noise_image(source, world, None, t, seed),
            cache_examples=True,
            cache_mode="lazy",
            label="Presets",
            example_labels=[f"early: t = {T // 10}", f"halfway: t = {T // 2}", f"the end: t = {T - 1}, pure noise"],
        )

    def _build_strength(self) -> tuple:
        """Section 3: img2img's strength as the start point on the chain."""
        gr.Markdown("### 3 · img2img 'strength' = where on this chain the sampler starts")
        with gr.Row():
            with gr.Column(scale=1):
                s_strength = gr.Slider(0, 1, value=0.6, step=0.05, label="strength")
                s_steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="sampler steps")
                s_btn = gr.Button("Where does it start?", variant="primary")
                s_text = gr.Markdown()
                explain(
                    "img2img noises your picture up to some t with the closed form, then denoises from there. "
                    "strength 1 starts from pure noise (the input is forgotten); small strength keeps most of it."
                )
            with gr.Column(scale=3):
                s_plot = gr.Plot(show_label=False, label="Start point on the schedule", format=PLOT_FORMAT)
        s_btn.click(
            self.strength,
            [s_strength, s_steps],
            [s_text, s_plot],
            api_name="strength",
            concurrency_id=MODEL_CONCURRENCY,
        )
        s_strength.release(
            self.strength,
            [s_strength, s_steps],
            [s_text, s_plot],
            api_visibility="undocumented",
            concurrency_id=MODEL_CONCURRENCY,
        )
        gr.Examples(
            [[0.3, 25], [0.75, 25], [1.0, 25]],
            inputs=[s_strength, s_steps],
            outputs=[s_text, s_plot],
            fn=self.strength,
            cache_examples=True,
            cache_mode="lazy",
            label="Presets",
            example_labels=["0.3: light touch-up", "0.75: big change", "1.0: from scratch"],
        )
        return s_text, s_plot
