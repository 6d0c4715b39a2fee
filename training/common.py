"""Shared training utilities: device choice, learning-rate schedule, EMA, logging, loss curves, time budget."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

__all__ = ["pick_device", "lr_at", "Ema", "StageLog", "autocast"]


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on CPU (bf16 does not help small convnets there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class Ema:
    """Exponential moving average of parameters with the usual (1 + n) / (10 + n) warm-up."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.n = 0
        self.names = [k for k, v in model.state_dict().items() if v.dtype.is_floating_point]
        self.shadow = [model.state_dict()[k].detach().clone().float() for k in self.names]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        state = model.state_dict()
        current = [state[k].detach().float() for k in self.names]
        torch._foreach_lerp_(self.shadow, current, 1 - d)  # shadow <- d * shadow + (1 - d) * current

    def copy_to(self, model: torch.nn.Module) -> None:
        state = model.state_dict()
        for k, v in zip(self.names, self.shadow, strict=True):
            state[k].copy_(v.to(state[k].device, state[k].dtype))


class StageLog:
    """Loss history of one stage, written as JSON and a PNG curve; prints progress lines with ETA."""

    def __init__(self, name: str, out_dir: Path, total_steps: int, time_budget_s: float | None = None):
        self.name, self.out_dir, self.total = name, Path(out_dir), total_steps
        self.budget = time_budget_s
        self.start = time.time()
        self.history: list[tuple[int, float]] = []
        self._acc: list[float] = []

    def elapsed(self) -> float:
        return time.time() - self.start

    def effective_step(self, step: int) -> int:
        """The step used for the learning-rate schedule: with a time budget, wall-clock progress counts too,
        so a run stopped by its budget still ends on the decayed learning rate."""
        if self.budget is None:
            return step
        return max(step, int(self.elapsed() / self.budget * self.total))

    def over_budget(self) -> bool:
        return self.budget is not None and self.elapsed() > self.budget

    def log(self, step: int, loss: float, every: int = 50, **extra: float) -> None:
        self._acc.append(loss)
        if (step + 1) % every == 0 or step + 1 == self.total or self.over_budget():
            mean = sum(self._acc) / len(self._acc)
            self._acc.clear()
            self.history.append((step + 1, mean))
            rate = self.elapsed() / (step + 1)
            eta = rate * (self.total - step - 1)
            more = " ".join(f"{k}={v:.4g}" for k, v in extra.items())
            print(
                f"[{self.name}] step {step + 1}/{self.total} loss={mean:.4f} {more} {rate:.3f}s/step eta {eta / 60:.1f} min",
                flush=True,
            )

    def save(self, **meta) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "stage": self.name,
            "seconds": self.elapsed(),
            "steps_done": self.history[-1][0] if self.history else 0,
        }
        record.update(meta)
        record["history"] = self.history
        (self.out_dir / f"{self.name}_log.json").write_text(json.dumps(record, indent=1))
        if self.history:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(6, 3.5), dpi=100)
            ax = fig.add_subplot()
            steps, losses = zip(*self.history, strict=True)
            ax.plot(steps, losses)
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.set_title(f"{self.name} training loss")
            fig.tight_layout()
            fig.savefig(self.out_dir / f"{self.name}_loss.png")
