"""Style transfer by SDEdit: start part-way up the forward chain from the content image, denoise with style words.

SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations"):
noise the content image's latent to an intermediate timestep t₀ with the closed form q(x_t₀ | x_0) (Ho et al. 2020,
eq. 4) and run the reverse chain from there, conditioned on a prompt that carries the new style. Noise erases fine
detail (texture, stroke, background) first and layout last, so a middle t₀ keeps *what is where* and lets the prompt
repaint *how it looks*. diffusers' ``StableDiffusionImg2ImgPipeline`` is exactly this; its ``strength`` is t₀ as a
fraction of the sampler's steps (:func:`explain.diffusion.noising.strength_to_start_step`). The U-Net input is the plain
4-channel latent: img2img changes only *where the chain starts*.

Style words of the shapes world: drawing styles ``outlined``, ``striped``; scenes ``at night``, ``on grass``,
``at sunset``.

Dual conditioning (content from one image, style from another): the U-Net's cross-attention reads text-encoder
token states, not CLIP image embeddings, so a style image cannot be fed to it directly. :func:`style_from_image`
instead reads the style image through the embedded model's CLIP image tower and picks the world style and scene
whose text embeddings (averaged over many object phrases, CLIP's prompt ensembling, Radford et al. 2021, Sec. 3.1.4)
are closest; those words then steer the img2img run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from explain import world
from explain.clip.model import load_clip
from explain.diffusion.loading import EMBEDDED_MODEL_DIR
from explain.diffusion.noising import StrengthStart, strength_to_start_step
from explain.engine.requests import RunSettings, prompt_text, quoted
from explain.usecases.inputs import resize, to_rgb, working_size
from explain.usecases.run import TaskResult, run_recorded

__all__ = [
    "STYLE_WORDS",
    "StylizeResult",
    "StyleGuess",
    "StyleReader",
    "compose_prompt",
    "style_from_image",
    "stylize",
]

STYLE_WORDS: tuple[str, ...] = world.STYLES + world.SCENES


@dataclass(frozen=True)
class StyleGuess:
    """World style and scene of an image, read by CLIP.

    Attributes:
        style: ``world.STYLES`` entry or None (plain filled shapes).
        scene: ``world.SCENES`` entry or None (light background).
        probabilities: ((scene, style), probability) for every combination, best first.
    """

    style: str | None
    scene: str | None
    probabilities: tuple[tuple[tuple[str | None, str | None], float], ...]

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(w for w in (self.scene, self.style) if w)


@dataclass(frozen=True, eq=False)
class StylizeResult(TaskResult):
    """:class:`~explain.usecases.run.TaskResult` plus the img2img specifics.

    Attributes:
        content: The content image as the pipeline read it (RGB, at the size it ran at).
        style_words: Style words added to the prompt.
        strength: img2img strength (``start`` says which step and timestep it means).
        style_guess: What :func:`style_from_image` read from a style image (None without one).
    """

    content: Image.Image
    style_words: tuple[str, ...]
    strength: float
    style_guess: StyleGuess | None


def _as_words(style: str | Sequence[str] | None) -> tuple[str, ...]:
    if style is None:
        return ()
    words = [style] if isinstance(style, str) else list(style)
    return tuple(w.strip() for w in words if w and w.strip())


def compose_prompt(prompt: str | None, style: str | Sequence[str] | None) -> str:
    """The prompt with style words added.

    A shapes-world prompt (``world.parse_prompt``) with world style words is rebuilt in the world grammar, the scene
    and drawing style replaced (``"a red circle on the left"`` + ``"at night"`` -> ``"a red circle on the left at
    night"``); otherwise the words are appended after a comma.

    Raises:
        ValueError: Two scenes or two drawing styles at once; no prompt and no style.
    """
    words = _as_words(style)
    if not words and not (prompt and prompt.strip()):
        raise ValueError("give a prompt, style words or a style image")
    scenes = [w for w in words if w in world.SCENES]
    styles = [w for w in words if w in world.STYLES]
    if len(scenes) > 1 or len(styles) > 1:
        raise ValueError(f"pick at most one scene and one drawing style, got {', '.join(words)}")
    parsed = world.parse_prompt(prompt) if prompt else None
    if parsed is not None and len(scenes) + len(styles) == len(words):
        scene = world.Scene(
            parsed.objects, scenes[0] if scenes else parsed.scene, styles[0] if styles else parsed.style
        )
        return world.caption(scene)[0]
    return ", ".join([p for p in (prompt.strip() if prompt else "",) if p] + list(words))


class StyleReader:
    """Zero-shot reader of world style and scene with CLIP (module docstring): text side computed once.

    Each (scene, style) combination is one class whose text embedding is the normalised mean over captions of every
    colour x shape with that scene and style (prompt ensembling); an image's class probabilities are
    softmax(logit_scale · cos(image, class)).

    Args:
        clip: A :class:`~explain.clip.model.ClipBundle`; default: the embedded model's CLIP.
    """

    def __init__(self, clip=None):
        if clip is None:
            clip = load_clip(EMBEDDED_MODEL_DIR)
        self.clip = clip
        self.combos = [(scene, style) for scene in (None, *world.SCENES) for style in (None, *world.STYLES)]
        objects = [world.WorldObject(c, s, "in the center") for c in world.COLORS for s in world.SHAPES]
        texts = [world.caption(world.Scene((o,), scene, style))[0] for scene, style in self.combos for o in objects]
        model = clip.model
        with torch.no_grad():
            emb = model.encode_text(clip.tokenizer(texts).to(self._device)).float()  # (K * O, D)
        emb = F.normalize(emb, dim=-1).view(len(self.combos), len(objects), -1).mean(dim=1)  # (K, D)
        self.class_embeddings = F.normalize(emb, dim=-1)  # (K, D)

    @property
    def _device(self) -> torch.device:
        return next(self.clip.model.parameters()).device

    @torch.no_grad()
    def __call__(self, image) -> StyleGuess:
        rgb, _ = to_rgb(image, "style image")
        model = self.clip.model
        pixels = self.clip.preprocess(rgb)[None].to(self._device)  # (1, 3, S, S)
        img = F.normalize(model.encode_image(pixels).float(), dim=-1)  # (1, D)
        probs = (model.logit_scale.exp() * img @ self.class_embeddings.T).softmax(dim=-1)[0]  # (K,)
        order = probs.argsort(descending=True).tolist()
        scene, style = self.combos[order[0]]
        return StyleGuess(style, scene, tuple((self.combos[i], round(float(probs[i]), 4)) for i in order))


def style_from_image(image, clip=None, reader: StyleReader | None = None) -> StyleGuess:
    """Read a world style and scene from an image with CLIP (see :class:`StyleReader`).

    Args:
        image: The style image.
        clip: A :class:`~explain.clip.model.ClipBundle` (default: the embedded model's CLIP).
        reader: A :class:`StyleReader` to reuse (its text side is computed once).
    """
    return (reader or StyleReader(clip))(image)


def _start(strength: float, steps: int, scheduler) -> StrengthStart:
    """Where ``strength`` starts the sampler (:func:`~explain.diffusion.noising.strength_to_start_step`), refusing a
    start that leaves no denoising step (and a strength outside [0, 1])."""
    start = strength_to_start_step(strength, steps, scheduler)
    if start.denoising_steps == 0:
        raise ValueError(
            f"strength {strength:g} x {steps} steps rounds down to 0 denoising steps (int({steps} x {strength:g}) = 0): "
            f"use strength >= {1 / steps:.3g} or more steps"
        )
    return start


def _styled_prompt(tokenizer, prompt, style, style_image, clip, reader, notes: list[str]):
    """(prompt with its style words, the words, CLIP's guess): explicit words, then those CLIP reads from
    ``style_image``; notes added. Refused (``ValueError``) when the text encoder cannot read all of it: the style
    words come last, so a cut would drop them silently."""
    words = list(_as_words(style))
    guess = None
    if style_image is not None:
        guess = style_from_image(style_image, clip, reader)
        words += _unclaimed(guess.words, words)
        notes.append(f"style image read by CLIP as: {', '.join(guess.words) or 'plain (no scene, no style)'}")
    if not prompt:
        notes.append("no content prompt: the U-Net sees only the style words; the content comes from the start latent")
    full_prompt = compose_prompt(prompt, words)
    field = f"content prompt with the style words {quoted(', '.join(words))}" if words else "content prompt"
    prompt_text(tokenizer, field, full_prompt, required=False)
    return full_prompt, words, guess


def _unclaimed(guessed: Sequence[str], words: Sequence[str]) -> list[str]:
    """Guessed style words whose kind (scene, style) the explicit ``words`` do not already name (explicit wins)."""
    taken_scene = any(w in world.SCENES for w in words)
    taken_style = any(w in world.STYLES for w in words)
    return [w for w in guessed if not ((w in world.SCENES and taken_scene) or (w in world.STYLES and taken_style))]


def stylize(
    image,
    style: str | Sequence[str] | None = None,
    prompt: str | None = None,
    *,
    pipe,
    strength: float = 0.6,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 7.5,
    negative_prompt: str | None = None,
    style_image=None,
    clip=None,
    reader: StyleReader | None = None,
    capture: bool = True,
    film_decode: str = "auto",
    preview=None,
    lock=None,
) -> StylizeResult:
    """Repaint a content image in a style: img2img (SDEdit) from the content, style words in the prompt.

    Args:
        image: Content image (PIL, array or path; converted to RGB, run at a size the U-Net accepts).
        style: Style words (``"striped"``, ``["at night", "outlined"]``, or free text for real checkpoints).
        prompt: What the content is (e.g. the world caption of the content); None: style words only.
        pipe: An img2img pipeline (:func:`~explain.usecases.models.load_task_pipeline` ``("img2img")``).
        strength: Where to start on the forward chain: 0 = the content as is, 1 = pure noise (content lost).
        seed: Seed of the CPU generator.
        steps: Sampler steps for strength 1; ``int(steps * strength)`` of them run.
        guidance: Classifier-free guidance scale.
        negative_prompt: Prompt of the unconditional branch.
        style_image: Optional image to read style words from (:func:`style_from_image`), merged with ``style``
            (explicit words win).
        clip: CLIP bundle for ``style_image``; default the embedded one.
        reader: A :class:`StyleReader` to reuse for ``style_image``.
        capture: Record cross-attention and the film.
        film_decode: ``"preview"`` or ``"vae"``.
        preview: A fitted :class:`~explain.capture.film.LatentPreview` to reuse.
        lock: Held for the pipeline call (the app's model lock; see :func:`explain.engine.run.recorded_run`).

    Raises:
        ValueError: strength outside [0, 1] or rounding to zero denoising steps, no style at all, a prompt (with
            its style words) longer than the text encoder reads, bad image.
    """
    RunSettings(seed, steps, guidance).validate()
    start = _start(strength, steps, pipe.scheduler)
    content, notes = to_rgb(image, "content image")
    notes = list(notes)
    full_prompt, words, guess = _styled_prompt(pipe.tokenizer, prompt, style, style_image, clip, reader, notes)
    prompt_text(pipe.tokenizer, "negative prompt", negative_prompt, required=False)
    size, size_notes = working_size(pipe, content.size)
    notes += size_notes
    content = resize(content, size)
    call = dict(
        prompt=full_prompt,
        image=content,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        negative_prompt=negative_prompt,
    )
    rec = run_recorded(pipe, call, seed=seed, capture=capture, film_decode=film_decode, preview=preview, lock=lock)
    return StylizeResult(
        task="stylize",
        image=rec.image,
        prompt=full_prompt,
        negative_prompt=negative_prompt,
        seed=seed,
        steps=steps,
        guidance=guidance,
        start=start,
        notes=tuple(notes),
        pipeline=type(pipe).__name__,
        **rec.task_fields(),
        content=content,
        style_words=tuple(words),
        strength=float(strength),
        style_guess=guess,
    )
