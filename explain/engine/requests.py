"""What a user may ask for: one set of limits, one message style, request dataclasses that check every field.

Every view and the library's own entry points check input here, so a field has one limit everywhere (steps 1 to
:data:`MAX_STEPS` in every tab) and one kind of message, naming the field as the UI labels it and saying what is
allowed: ``"seed must be a whole number from 0 to 4294967295 (got -3)."``. Errors are ``ValueError``; demo/ turns
them into ``gr.Error`` (``demo.common.user_errors``), the CLI into one line on stderr.

- :func:`finite`, :func:`whole`, :func:`number`, :func:`one_of`, :func:`prompt_text`, :func:`number_list`: the field
  checks; :func:`quoted`: a value as a message echoes it (short: a 10 000-character value is not sent back).
- :func:`guidance_scales`: the scales of a guidance sweep, from text.
- :class:`RunSettings`: seed, steps and guidance, shared by the steering experiments and the use cases.
- :class:`GenerationRequest`: one text-to-image generation (the app's "Denoise & attend" tab), checked against the
  pipeline's geometry (:class:`explain.diffusion.geometry.Geometry`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from explain.clip.tokens import tokenize_prompt
from explain.diffusion.geometry import Geometry

__all__ = [
    "MAX_STEPS",
    "MAX_GUIDANCE",
    "MAX_SCALES",
    "MAX_SEED",
    "MAX_PROMPT_CHARS",
    "SCHEDULER_CHOICES",
    "finite",
    "whole",
    "number",
    "one_of",
    "prompt_text",
    "number_list",
    "quoted",
    "guidance_scales",
    "RunSettings",
    "GenerationRequest",
]

# Display name -> key of explain.diffusion.loading.SCHEDULERS ("default" keeps the model's own scheduler class).
SCHEDULER_CHOICES: dict[str, str | None] = {
    "default": None,
    "DDIM": "ddim",
    "DPM-Solver++": "dpm++",
    "Euler": "euler",
    "Euler-a": "euler-a",
    "Heun": "heun",
    "UniPC": "unipc",
    "PNDM": "pndm",
    "DDPM": "ddpm",
}
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_SCALES = 8  # guidance scales of one sweep (each is a whole generation)
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 20_000  # longer text is refused before tokenising it (77 slots hold a few hundred characters)
CUT_TOKENS_SHOWN = 8  # an over-long prompt's error quotes this many of the tokens that would be cut
QUOTED_CHARS = 60  # a value echoed in a message shows at most this many characters


# -- field checks ----------------------------------------------------------------------------------------------------
def quoted(text) -> str:
    """``text`` as a message echoes it: its ``repr``, cut after :data:`QUOTED_CHARS` characters with its length said
    (``'a big red circle on the left and a big red circle on the lef'… (10000 characters)``)."""
    text = str(text)
    if len(text) <= QUOTED_CHARS:
        return repr(text)
    return f"{text[:QUOTED_CHARS]!r}… ({len(text)} characters)"


def finite(field: str, value) -> float:
    """``value`` as a float if it is a finite real number (not bool, text, NaN or infinities)."""
    if not _is_number(value):
        raise ValueError(f"{field} must be a finite number (got {value!r}).")
    return float(value)


def whole(field: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (``3`` and ``3.0``, not ``2.5``)."""
    result = finite(field, value)
    if not result.is_integer():
        raise ValueError(f"{field} must be a whole number (got {value}).")
    if (low is not None and result < low) or (high is not None and result > high):
        raise ValueError(f"{field} must be a whole number from {low} to {high} (got {value}).")
    return int(result)


def number(field: str, value, low: float, high: float, note: str = "") -> float:
    """``value`` as a finite float in ``[low, high]``; ``note`` is added to the message (what the range means)."""
    result = finite(field, value)
    if not low <= result <= high:
        raise ValueError(f"{field} must be a number from {low:g} to {high:g} (got {value}){note}.")
    return result


def one_of(field: str, value, choices) -> object:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {field} {value!r}; choose from {', '.join(map(str, choices))}.")
    return value


def prompt_text(tokenizer, field: str, text, required: bool = True) -> str:
    """``text`` if the text encoder reads all of it (it would be cut silently otherwise); ``""`` allowed when not
    ``required``. The message names the field, the limit and the first few words that would be lost."""
    if text is None or (isinstance(text, str) and not text.strip()):
        if required:
            raise ValueError(f"The {field} is empty: type what the picture should show.")
        return ""
    if not isinstance(text, str):
        raise ValueError(f"The {field} must be text, not {type(text).__name__}.")
    slots = tokenizer.model_max_length
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"The {field} is {len(text)} characters long; the text encoder reads at most {slots - 2} tokens "
            f"(a few hundred characters) and the app accepts at most {MAX_PROMPT_CHARS}. Shorten it."
        )
    view = tokenize_prompt(tokenizer, text)
    if not view.truncated:
        return text
    cut = tokenizer.decode(tokenizer.convert_tokens_to_ids(list(view.truncated[:CUT_TOKENS_SHOWN]))).strip()
    more = len(view.truncated) - CUT_TOKENS_SHOWN
    raise ValueError(
        f"The {field} is {view.n_prompt_tokens + len(view.truncated)} tokens long; the text encoder has {slots} "
        f"slots, {slots - 2} for words (BOS and EOS take two). {len(view.truncated)} tokens would be cut, starting "
        f"with “{cut}”{f' and {more} more' if more > 0 else ''}. Shorten it."
    )


def number_list(field: str, text, low: float, high: float, most: int, example: str) -> list[float]:
    """The numbers in comma (or semicolon) separated ``text``: 1 to ``most`` of them, each finite and in
    ``[low, high]``. The message names the field, the format and the range: ``"guidance scales must be 1 to 8
    numbers from 0 to 30, separated by commas (e.g. 1, 3, 7.5); 'x' is not a number."``"""
    allowed = f"{field} must be 1 to {most} numbers from {low:g} to {high:g}, separated by commas (e.g. {example})"
    if not isinstance(text, str):
        raise ValueError(f"{allowed}; got a {type(text).__name__}, not text.")
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    if not 1 <= len(parts) <= most:
        raise ValueError(f"{allowed}; got {len(parts) or 'none'}.")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{allowed}; {quoted(part)} is not a number.") from None
        if not low <= value <= high:  # NaN fails too
            raise ValueError(f"{allowed}; {quoted(part)} is not a number from {low:g} to {high:g}.")
        values.append(value)
    return values


def guidance_scales(text) -> list[float]:
    """The guidance scales of a sweep from text such as ``"1, 3, 7.5"`` (:func:`number_list`: 1 to
    :data:`MAX_SCALES` numbers from 0 to :data:`MAX_GUIDANCE`)."""
    return number_list("guidance scales", text, 0, MAX_GUIDANCE, MAX_SCALES, example="1, 3, 7.5")


# -- requests ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSettings:
    """Seed, sampler steps and classifier-free guidance scale of one run (steering experiments, use cases)."""

    seed: int = 0
    steps: int = 20
    guidance: float = 7.5

    def validate(self) -> RunSettings:
        """The settings with every field checked (``ValueError`` naming the first bad one)."""
        return RunSettings(
            seed=whole("seed", self.seed, 0, MAX_SEED),
            steps=whole("steps", self.steps, 1, MAX_STEPS),
            guidance=number("guidance", self.guidance, 0, MAX_GUIDANCE, "; <= 1 turns it off"),
        )


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. ``height``/``width`` ``None`` mean the model's default size."""

    prompt: str
    negative: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    scheduler: str = "default"
    height: int | None = None
    width: int | None = None

    def validate(self, pipe) -> tuple[int, int]:
        """Check every field against the pipeline; returns the (height, width) to use.

        Raises:
            ValueError: with a message that names the field, says what is wrong and what is allowed.
        """
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("The prompt is empty: type what the picture should show.")
        prompt_text(pipe.tokenizer, "prompt", self.prompt)
        prompt_text(pipe.tokenizer, "negative prompt", self.negative, required=False)
        RunSettings(self.seed, self.steps, self.guidance).validate()
        one_of("scheduler", self.scheduler, SCHEDULER_CHOICES)
        multiple, default_hw, max_side = Geometry.from_pipeline(pipe, layers=False).limits
        hw = (self.height or default_hw[0], self.width or default_hw[1])
        for name, value in zip(("height", "width"), hw, strict=True):
            if not _is_whole(value) or value % multiple or not multiple <= value <= max_side:
                raise ValueError(
                    f"{name} {value} is not allowed: use a multiple of {multiple} from {multiple} to {max_side} "
                    f"pixels (this model's default is {default_hw[0]} x {default_hw[1]})."
                )
        return int(hw[0]), int(hw[1])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_whole(value) -> bool:
    """A finite number without a fractional part (``3`` and ``3.0``, not ``2.5``, NaN or ``"3"``)."""
    return _is_number(value) and float(value).is_integer()


def _is_number(value) -> bool:
    """A finite real number (bool, text, NaN and infinities are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
