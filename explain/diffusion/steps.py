"""Which denoising step each U-Net call of a sampler belongs to.

A user asks for ``N`` steps (``scheduler.num_inference_steps``); the pipeline calls the U-Net once per entry of
``scheduler.timesteps``, and the two counts differ for some samplers:

- **second-order** samplers (Heun, KDPM2: ``scheduler.order == 2``) make two calls a step (a predictor and a
  corrector) except the last, which is a plain Euler step to σ = 0: ``2N - 1`` calls;
- **PNDM** in PLMS mode (Stable Diffusion's default, ``skip_prk_steps``) makes one call a step plus one warm-up
  call: its first step is a predictor at t₀ and a corrector that repeats t₁ (Liu et al. 2022, "Pseudo Numerical
  Methods for Diffusion Models", the PLMS start), so ``timesteps`` holds t₁ twice: ``N + 1`` calls.

:class:`StepPlan` maps calls to steps once, so progress counters and the film say "step k / N" with each step's
own starting timestep (no step is shown twice, none is missing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["StepPlan"]


@dataclass(frozen=True)
class StepPlan:
    """The grouping of ``calls`` U-Net calls into ``total`` denoising steps.

    Attributes:
        timesteps: The timestep passed to the U-Net at each call (``scheduler.timesteps``).
        order: Calls a step makes (``scheduler.order``; 2 for Heun and KDPM2).
        warm_up: Extra calls before the first step completes (PNDM's PLMS start: 1; else 0).
    """

    timesteps: tuple[float, ...]
    order: int = 1
    warm_up: int = 0

    @classmethod
    def of(cls, scheduler) -> StepPlan:
        """The plan of a scheduler after ``set_timesteps``."""
        steps = scheduler.timesteps
        values = steps.tolist() if hasattr(steps, "tolist") else steps  # one conversion, not one tensor per element
        timesteps = tuple(float(t) for t in values)
        order = int(getattr(scheduler, "order", 1))
        asked = getattr(scheduler, "num_inference_steps", None)
        warm_up = len(timesteps) - int(asked) if order == 1 and asked and len(timesteps) > int(asked) else 0
        return cls(timesteps, order, warm_up)

    @property
    def calls(self) -> int:
        return len(self.timesteps)

    @property
    def total(self) -> int:
        """How many denoising steps the run makes (what the user asked for)."""
        return math.ceil((self.calls - self.warm_up) / self.order)

    def step_of(self, call: int) -> int:
        """The 0-based step that U-Net call ``call`` belongs to."""
        return max(call - self.warm_up, 0) // self.order

    def completes(self, call: int) -> bool:
        """Whether call ``call`` finishes its step (its callback sees that step's result)."""
        if call < self.warm_up:
            return False
        return (call - self.warm_up + 1) % self.order == 0 or call == self.calls - 1

    def steps_done(self, call: int) -> int:
        """Steps finished once call ``call`` has run."""
        return self.step_of(call) + 1 if self.completes(call) else self.step_of(call)

    def start_timestep(self, step: int) -> float:
        """The timestep step ``step`` starts from: that of its first U-Net call."""
        first = 0 if step == 0 else self.warm_up + step * self.order
        return self.timesteps[first]
