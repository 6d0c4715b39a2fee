"""The fixed evaluation prompt set: what the embedded model is asked to draw when it is graded.

Kinds (:data:`KINDS`):

- ``single``: one object; every colour-shape pair that training shows (36 - 5 held-out = 31 pairs), each once,
  positions and size words assigned greedily so that colours and shapes meet every position and every size
  word (none / small / big) as evenly as possible.
- ``two``: two objects of distinct colours at compatible positions (no held-out pair).
- ``held_out_single``: one object whose colour-shape pair is in ``world.HELD_OUT_PAIRS`` (never drawn in
  training by construction of ``world.sample_scene(allow_held_out=False)``): compositional generalisation.
- ``held_out_two``: two objects, at least one a held-out pair.
- ``styled``: one or two objects (no held-out pair) with a scene (``at night``, ``on grass``, ``at sunset``)
  and/or a style (``outlined``, ``striped``) suffix.

The set is a pure function of its seed (default 0): same prompts in the same order on every machine. Every prompt
parses back to its scene with ``world.parse_prompt``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from explain import world

__all__ = ["KINDS", "EvalPrompt", "prompt_set", "has_held_out_pair"]

KINDS: tuple[str, ...] = ("single", "two", "held_out_single", "held_out_two", "styled")
N_TWO = 36
N_HELD_OUT_TWO = 12
HELD_OUT_SINGLE_PER_PAIR = 2
N_STYLED = 12
_SIZES: tuple[str | None, ...] = (None, "small", "big")


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt.

    Attributes:
        prompt: The caption text (``world.caption(scene)``).
        scene: What it asks for.
        kind: One of :data:`KINDS`.
    """

    prompt: str
    scene: world.Scene
    kind: str


def has_held_out_pair(scene: world.Scene) -> bool:
    """True when an object of ``scene`` is a colour-shape pair of ``world.HELD_OUT_PAIRS``."""
    return any((o.color, o.shape) in world.HELD_OUT_PAIRS for o in scene.objects)


def _entry(scene: world.Scene, kind: str) -> EvalPrompt:
    text, _ = world.caption(scene)
    return EvalPrompt(prompt=text, scene=scene, kind=kind)


def _singles(pairs: list[tuple[str, str]], kind: str, repeats: int = 1) -> list[EvalPrompt]:
    """One-object scenes. Positions and size words are assigned greedily, each time the least used one for this
    colour and this shape (then overall, then in table order), so colours and shapes meet every position and
    size word as evenly as the pair count allows."""
    used: Counter = Counter()
    out = []
    for color, shape in pairs:
        for _ in range(repeats):
            chosen = []
            for axis, options in (("position", tuple(world.POSITIONS)), ("size", _SIZES)):
                best = min(
                    range(len(options)),
                    key=lambda i, axis=axis, options=options: (
                        used[color, axis, options[i]] + used[shape, axis, options[i]],
                        used[axis, options[i]],
                        i,
                    ),
                )
                option = options[best]
                used.update([(color, axis, option), (shape, axis, option), (axis, option)])
                chosen.append(option)
            obj = world.WorldObject(color, shape, chosen[0], chosen[1])
            out.append(_entry(world.Scene(objects=(obj,)), kind))
    return out


def _sampled(
    rng: np.random.Generator, n: int, kind: str, keep: Callable[[world.Scene], bool], seen: set[str], **sample_kwargs
) -> list[EvalPrompt]:
    """``n`` distinct scenes drawn by ``world.sample_scene(rng, **sample_kwargs)`` that satisfy ``keep``."""
    out = []
    while len(out) < n:
        scene = world.sample_scene(rng, **sample_kwargs)
        entry = _entry(scene, kind)
        if keep(scene) and entry.prompt not in seen:
            seen.add(entry.prompt)
            out.append(entry)
    return out


def prompt_set(seed: int = 0) -> tuple[EvalPrompt, ...]:
    """The evaluation prompts, deterministic in ``seed`` (see the module docstring; 101 prompts)."""
    rng = np.random.default_rng(seed)
    trained_pairs = [(c, s) for c in world.COLORS for s in world.SHAPES if (c, s) not in world.HELD_OUT_PAIRS]
    out = _singles(trained_pairs, "single")
    out += _singles(sorted(world.HELD_OUT_PAIRS), "held_out_single", repeats=HELD_OUT_SINGLE_PER_PAIR)
    seen = {e.prompt for e in out}
    plain = {"max_objects": 2, "p_scene": 0.0, "p_style": 0.0}
    out += _sampled(rng, N_TWO, "two", lambda s: len(s.objects) == 2, seen, **plain)
    out += _sampled(
        rng,
        N_HELD_OUT_TWO,
        "held_out_two",
        lambda s: len(s.objects) == 2 and has_held_out_pair(s),
        seen,
        allow_held_out=True,
        **plain,
    )
    out += _sampled(
        rng, N_STYLED, "styled", lambda s: bool(s.scene or s.style), seen, max_objects=2, p_scene=0.5, p_style=0.5
    )
    return tuple(out)


def _summary(prompts: tuple[EvalPrompt, ...]) -> dict[str, int]:
    return dict(Counter(p.kind for p in prompts))


if __name__ == "__main__":
    ps = prompt_set()
    for p in ps:
        print(f"{p.kind:16s} {p.prompt}")
    print(_summary(ps))
