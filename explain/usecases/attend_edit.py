"""Edit where a word attends: a word's attention map becomes the inpainting mask of an edited prompt.

The step that turns attention from a picture into a tool (prompt-to-prompt's LocalBlend, Hertz et al. 2022; DiffEdit,
Couairon et al. 2023; the DAAM paper's segmentation, Tang et al. 2023): generate the image, take one word's DAAM map
(:func:`explain.maps.aggregation.aggregate`, mean over steps, layers and heads), min-max normalise it, keep the
pixels above the threshold τ (DAAM's 0.4 by default) and grow them by a few pixels (``dilation``: a square max
filter), then inpaint only there with the edited prompt and the same seed
(:func:`explain.usecases.inpainting.inpaint`: the 9-channel inpainting U-Net, or 4-channel blending for any
text-to-image checkpoint). Pixels outside the mask are pasted back exactly, so every changed pixel lies inside it by
construction; the result reports the shares anyway (``|Δ| > CHANGE_LEVEL`` in any channel), which a user can check.

An image that was not generated here (an upload) has no recorded attention, so its maps are recorded while the
model re-denoises it: the image is noised to ``map_strength`` of the forward chain and denoised with its prompt by an
img2img pipeline (SDEdit, Meng et al. 2022), the cross-attention of those steps aggregated as for a generation; the
inpainting then edits the uploaded image itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from explain.engine.requests import RunSettings, prompt_text
from explain.engine.run import Capture, recorded_run
from explain.maps.aggregation import aggregate, normalize, threshold_mask
from explain.maps.score import DAAM_TAU
from explain.steering.causal import share_inside
from explain.steering.edits import require_cross_attention, word_token_indices
from explain.usecases.inpainting import InpaintResult, inpaint
from explain.usecases.inputs import resize, to_rgb, working_size

__all__ = ["CHANGE_LEVEL", "MAX_DILATION", "MAP_STRENGTH", "AttendEditResult", "word_mask", "edit_where_attends"]

CHANGE_LEVEL = 8 / 255  # a pixel counts as changed when some channel moved by more than this
MAX_DILATION = 32  # pixels


def word_mask(word_map: np.ndarray, threshold: float = DAAM_TAU, dilation: int = 0) -> np.ndarray:
    """(H, W) bool: the min-max-normalised ``word_map`` above ``threshold``, grown by ``dilation`` pixels.

    Raises:
        ValueError: ``threshold`` outside (0, 1), ``dilation`` outside 0..:data:`MAX_DILATION`, or an empty mask.
    """
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    if int(dilation) != dilation or not 0 <= dilation <= MAX_DILATION:
        raise ValueError(f"dilation must be a whole number of pixels from 0 to {MAX_DILATION}, got {dilation}")
    mask = threshold_mask(torch.as_tensor(word_map, dtype=torch.float32), threshold).float()[None]  # (1, H, W)
    if dilation:
        mask = F.max_pool2d(mask[None], kernel_size=2 * int(dilation) + 1, stride=1, padding=int(dilation))[0]
    if not bool(mask.any()):
        raise ValueError(f"no pixel of the word's map lies above {threshold:g}: lower the threshold")
    return mask[0].bool().numpy()


@dataclass(frozen=True, eq=False)
class AttendEditResult:
    """An edit where a word attends.

    Attributes:
        before: The generated image (RGB).
        after: The edited image (RGB, same size): ``before`` outside ``mask``.
        prompt: The prompt of ``before``.
        word: The word whose map made the mask.
        edited_prompt: The prompt inpainted inside the mask.
        word_map: (H, W) float32 in [0, 1], the word's min-max-normalised DAAM map.
        mask: (H, W) bool, the region that was inpainted.
        threshold: τ of the mask.
        dilation: Pixels the mask was grown by.
        inpainting: The inpainting run (its U-Net input table, mode, timesteps).
        changed: (H, W) bool, pixels whose value moved by more than :data:`CHANGE_LEVEL`.
    """

    before: Image.Image
    after: Image.Image
    prompt: str
    word: str
    edited_prompt: str
    word_map: np.ndarray
    mask: np.ndarray
    threshold: float
    dilation: int
    inpainting: InpaintResult
    changed: np.ndarray

    @property
    def mask_area(self) -> float:
        """Share of the image inside the mask."""
        return float(self.mask.mean())

    @property
    def share_inside(self) -> float | None:
        """Share of the changed pixels that lie inside the mask (None when nothing changed)."""
        return share_inside(self.changed, self.mask)

    def difference_image(self, gain: float = 4.0) -> np.ndarray:
        """(H, W, 3) uint8: |after − before| amplified by ``gain``."""
        diff = np.abs(np.asarray(self.after, dtype=np.float32) - np.asarray(self.before, dtype=np.float32))
        return np.clip(diff * gain, 0, 255).astype(np.uint8)


MAP_STRENGTH = 0.6  # an upload is noised this far before its maps are recorded (the layout survives, SDEdit)


def _maps_of_image(image, call: dict, map_pipe, strength: float, seed: int, lock):
    """(the image as RGB at a size the model takes, the img2img run that recorded its maps)."""
    if map_pipe is None:
        raise ValueError("an uploaded image needs map_pipe (an img2img pipeline) to record its attention maps")
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"map_strength must lie in (0, 1], got {strength}")
    source, _ = to_rgb(image)
    size, _ = working_size(map_pipe, source.size)
    source = resize(source, size)
    run = recorded_run(
        map_pipe, call | dict(image=source, strength=float(strength)), seed=seed, draw_noise=False,
        capture=Capture(film=False), lock=lock,
    )  # fmt: skip
    return source, run


def edit_where_attends(
    prompt: str,
    word: str,
    edited_prompt: str,
    *,
    pipe,
    inpaint_pipe,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 7.5,
    inpaint_guidance: float = 3.0,
    threshold: float = DAAM_TAU,
    dilation: int = 2,
    height: int | None = None,
    width: int | None = None,
    image=None,
    map_pipe=None,
    map_strength: float = MAP_STRENGTH,
    lock=None,
) -> AttendEditResult:
    """Generate ``prompt`` (or take ``image``), mask where ``word`` attends, inpaint ``edited_prompt`` there with the
    same seed.

    Args:
        prompt: The prompt of the image to edit.
        word: A word (or phrase) of ``prompt``; its map is the mask.
        edited_prompt: The whole edited caption (e.g. the prompt with "dog" replaced by "cat").
        pipe: The text-to-image pipeline (SD 1.x / 2.x / XL).
        inpaint_pipe: An inpainting pipeline on the same VAE (:func:`explain.usecases.models.load_task_pipeline`
            ``("inpaint", base=pipe, mode=...)``).
        seed: Seed of both runs (the engine's seed policy).
        steps: Sampler steps of both runs.
        guidance: Guidance of the generation.
        inpaint_guidance: Guidance of the inpainting (see :func:`~explain.usecases.inpainting.inpaint`).
        threshold: τ on the min-max-normalised map.
        dilation: Pixels the mask is grown by (the map is coarse: its object's edge lies a little outside).
        height: Image height (default: the model's).
        width: Image width.
        image: An image to edit instead of a generation (PIL, array or path); ``prompt`` should describe it.
        map_pipe: With ``image``: an img2img pipeline on the same model
            (:func:`explain.usecases.models.load_task_pipeline` ``("img2img", base=pipe)``) that records its maps.
        map_strength: With ``image``: how far along the forward chain it is noised before the maps are recorded.
        lock: Held for each pipeline call.

    Raises:
        ValueError: bad settings, ``word`` not in the prompt, an empty edited prompt or mask, a joint-attention model.
    """
    require_cross_attention(pipe, "editing where a word attends")
    RunSettings(seed, steps, guidance).validate()
    prompt = prompt_text(pipe.tokenizer, "prompt", prompt)
    edited_prompt = prompt_text(pipe.tokenizer, "edited prompt", edited_prompt)
    indices = word_token_indices(pipe.tokenizer, prompt, word)
    call = dict(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance)
    if image is None:
        run = recorded_run(
            pipe, call | dict(height=height, width=width), seed=seed, capture=Capture(film=False), lock=lock
        )
        before = run.image.convert("RGB")
    else:
        before, run = _maps_of_image(image, call, map_pipe, map_strength, seed, lock)
    heat = aggregate(run.captured, run.view, image_size=(before.height, before.width)).span_map(indices)  # (H, W)
    mask = word_mask(heat.numpy(), threshold, dilation)
    result = inpaint(
        before,
        Image.fromarray(mask.astype(np.uint8) * 255),
        edited_prompt,
        pipe=inpaint_pipe,
        seed=seed,
        steps=steps,
        guidance=inpaint_guidance,
        capture=False,
        lock=lock,
    )
    after = result.image.convert("RGB")
    delta = np.abs(np.asarray(after, dtype=np.float32) - np.asarray(before, dtype=np.float32)).max(axis=-1)
    return AttendEditResult(
        before=before,
        after=after,
        prompt=prompt,
        word=word,
        edited_prompt=edited_prompt,
        word_map=normalize(heat[None], "minmax")[0].numpy().astype(np.float32),
        mask=mask,
        threshold=float(threshold),
        dilation=int(dilation),
        inpainting=result,
        changed=delta > CHANGE_LEVEL * 255,
    )
