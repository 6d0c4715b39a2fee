"""Stage 3: the text-conditioned U-Net, DDPM training (Ho et al. 2020, Algorithm 1) in the VAE's latent space.

Conditioned, as Stable Diffusion is, on the frozen text tower's per-token hidden states (77 x width), with
caption dropout (10 %) for classifier-free guidance (Ho & Salimans 2022) and EMA weights.

Optional: a token grounding loss in the spirit of TokenCompose (Wang et al. 2024): for each object's colour and
shape token, the share of its cross-attention mass that falls inside the object's true mask is pushed towards 1,
``L_token = mean (1 - sum_inside(A) / sum(A))^2``, and optionally TokenCompose's pixel term, a binary cross-entropy
between each of those tokens' attention probabilities and the mask, ``L_pixel = BCE(A[:, token], M)``, which asks
the whole object (not just a part of it) to attend to the word. Real SD is not trained with them;
``grounding_weight = 0`` is the plain SD recipe. They use a training-only attention processor set through the
public processor API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from training.common import Ema, StageLog, autocast, lr_at
from training.config import TrainConfig
from training.data import WorldData
from training.models import build_unet

__all__ = [
    "train_unet",
    "diffusion_loop",
    "Batch",
    "text_batch",
    "make_train_scheduler",
    "encode_text_states",
    "encode_latents",
    "GroundingProcessor",
]


def make_train_scheduler(num_train_timesteps: int) -> DDPMScheduler:
    """Stable Diffusion's schedule: 'scaled_linear' betas from 0.00085 to 0.012."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


@torch.no_grad()
def encode_text_states(text_model, tokens: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """(N, 77) ids -> (N, 77, width) float16 last hidden states (what the pipeline feeds the U-Net)."""
    out = []
    for i in range(0, len(tokens), batch):
        out.append(text_model(tokens[i : i + batch]).last_hidden_state.half())
    return torch.cat(out)


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, C, H/f, W/f) latents (posterior mean) times ``vae.config.scaling_factor``."""
    from training.train_clip import images_to_tensor

    out = []
    for i in range(0, len(images), batch):
        x = images_to_tensor(images[i : i + batch].to(device), device)
        out.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out)


class GroundingProcessor:
    """Training-only cross-attention processor: explicit softmax(QK^T * scale) V that keeps the probabilities.

    Args:
        sink: list that receives (B, heads, N, T) attention probabilities per call.
    """

    def __init__(self, sink: list):
        self.sink = sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        b, n, _ = hidden_states.shape  # (B, N, C)
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*h, N, d)
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (B*h, T, d)
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))  # (B*h, T, d)
        probs = attn.get_attention_scores(q, k, None)  # (B*h, N, T)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))  # (B, N, C)
        self.sink.append(probs.view(b, attn.heads, n, -1))
        return attn.to_out[1](attn.to_out[0](out))


def _token_probs_and_masks(
    probs: torch.Tensor, obj_tokens: torch.Tensor, obj_masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's attention on each mask's grounding tokens, and the masks at that layer's size.

    Args:
        probs: (B, heads, N, T) attention probabilities.
        obj_tokens: (B, O, K) token indices naming each mask (shapes world: colour and shape word; -1: none).
        obj_masks: (B, O, h0, w0) float object masks at latent size, in [0, 1].

    Returns:
        ``a`` (B, heads, N, O*K) probabilities of the tokens, ``mm`` (B, 1, N, O*K) binary masks.
    """
    b, heads, n, _ = probs.shape
    h0, w0 = obj_masks.shape[-2:]
    f = round((h0 * w0 / n) ** 0.5)  # downsampling factor of this layer
    m = F.avg_pool2d(obj_masks, f) if f > 1 else obj_masks  # (B, O, h, w)
    m = (m.flatten(2) > 0.5).float()  # (B, O, N)
    k = obj_tokens.shape[2]
    idx = obj_tokens.clamp(min=0).long().flatten(1)[:, None, None, :].expand(b, heads, n, -1)  # (B, heads, N, O*K)
    a = probs.float().gather(3, idx)  # (B, heads, N, O*K)
    mm = m.repeat_interleave(k, dim=1).transpose(1, 2)[:, None]  # (B, 1, N, O*K)
    return a, mm


def grounding_loss(
    probs_list: list[torch.Tensor],
    obj_tokens: torch.Tensor,
    obj_masks: torch.Tensor,
    keep: torch.Tensor,
    pixel_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TokenCompose-style token loss and pixel loss, each averaged over layers.

    Args:
        probs_list: per layer (B, heads, N, T) attention probabilities.
        obj_tokens: (B, O, K) token indices naming each mask (-1: none).
        obj_masks: (B, O, h0, w0) float object masks at latent size, in [0, 1].
        keep: (B,) bool, False where the caption was dropped.
        pixel_weight: 0 skips the pixel term (returned as zero).

    Returns:
        (L_token, L_pixel), unweighted.
    """
    valid = (obj_tokens >= 0) & keep[:, None, None]  # (B, O, K)
    zero = obj_masks.new_zeros(())
    if not valid.any():
        return zero, zero
    w = valid.flatten(1)[:, None, :].float()  # (B, 1, O*K)
    token, pixel = zero, zero
    for probs in probs_list:
        heads = probs.shape[1]
        a, mm = _token_probs_and_masks(probs, obj_tokens, obj_masks)
        share = a / a.sum(2, keepdim=True).clamp_min(1e-8)
        frac = (share * mm).sum(2)  # (B, heads, O*K): share of the token's attention inside its mask
        token = token + ((1 - frac) ** 2 * w).sum() / (w.sum() * heads)
        if pixel_weight > 0:
            bce = F.binary_cross_entropy(a.clamp(1e-6, 1 - 1e-6), mm.expand_as(a), reduction="none").mean(2)
            pixel = pixel + (bce * w).sum() / (w.sum() * heads)  # bce: (B, heads, O*K)
    return token / len(probs_list), pixel / len(probs_list)


@dataclass
class Batch:
    """One training batch for :func:`diffusion_loop`.

    Attributes:
        z0: (B, C, h, w) clean latents.
        cond: (B, 77, width) text states (already replaced by the empty caption's where dropped).
        keep: (B,) bool, False where the caption was dropped.
        extra: (B, C', h, w) channels concatenated to the noisy latents (inpainting, super-resolution), or None.
        class_labels: (B,) int class labels (the upscaler's noise level), or None.
    """

    z0: torch.Tensor
    cond: torch.Tensor
    keep: torch.Tensor
    extra: torch.Tensor | None = None
    class_labels: torch.Tensor | None = None


def diffusion_loop(
    unet,
    cfg: TrainConfig,
    make_batch: Callable[[torch.Tensor, torch.Generator], Batch],
    n_items: int,
    out_dir: Path,
    device: torch.device,
    name: str,
    extra_loss: Callable[[torch.Tensor, Batch], tuple[torch.Tensor, dict]] | None = None,
) -> Path:
    """DDPM training (Ho et al. 2020, Algorithm 1) of ``unet`` with EMA; saves the EMA weights to ``out_dir/name``.

    ``make_batch(idx, generator)`` supplies the clean latents and the conditioning of items ``idx``; the U-Net input
    is the noisy latent, with ``Batch.extra`` channels concatenated when the task has them.
    """
    u = cfg.unet
    ema = Ema(unet, u.ema_decay)
    acp = make_train_scheduler(u.num_train_timesteps).alphas_cumprod.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=u.lr, weight_decay=0.01)
    log = StageLog(name, out_dir, u.steps, cfg.time_budget_s.get(name, cfg.time_budget_s.get("unet")))
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 2)
    save_every = max(200, min(500, u.steps // 10))
    state_path = out_dir / f"{name}_resume.pt"
    start = _resume(state_path, unet, opt, ema, gen, log) if state_path.exists() else 0
    for step in range(start, u.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(log.effective_step(step), u.steps, u.lr, u.warmup)
        idx = torch.randint(0, n_items, (u.batch_size,), generator=gen).to(device)
        b = make_batch(idx, gen)
        t = torch.randint(0, u.num_train_timesteps, (u.batch_size,), generator=gen).to(device)
        noise = torch.randn(b.z0.shape, generator=gen).to(device)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * b.z0 + (1 - a).sqrt() * noise  # q(x_t | x_0), Ho et al. 2020 eq. 4
        x_in = zt if b.extra is None else torch.cat([zt, b.extra], dim=1)  # (B, C + C', h, w)
        unet.train()
        with autocast(device):
            pred = unet(x_in, t, b.cond, class_labels=b.class_labels).sample
        loss = F.mse_loss(pred.float(), noise)
        extra = {}
        if extra_loss is not None:
            more, extra = extra_loss(loss, b)
            loss = loss + more
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet)
        log.log(step, loss.item(), every=100, **extra)
        if (step + 1) % save_every == 0 or log.over_budget() or step + 1 == u.steps:
            _save_ema(unet, ema, out_dir / name)
            _save_resume(state_path, step + 1, unet, opt, ema, gen, log)
        if log.over_budget():
            break
    log.save(grounding_weight=u.grounding_weight, grounding_pixel_weight=u.grounding_pixel_weight)
    return out_dir / name


def text_batch(
    latents: torch.Tensor, text_states: torch.Tensor, empty_state: torch.Tensor, p_drop: float, device
) -> Callable[[torch.Tensor, torch.Generator], Batch]:
    """Batches of (latent, text state) pairs with caption dropout for classifier-free guidance."""

    def make(idx: torch.Tensor, gen: torch.Generator) -> Batch:
        keep = torch.rand(len(idx), generator=gen).to(device) >= p_drop  # (B,)
        cond = torch.where(keep[:, None, None], text_states[idx], empty_state[None]).float()  # (B, 77, width)
        return Batch(z0=latents[idx].float(), cond=cond, keep=keep)

    return make


def train_unet(
    cfg: TrainConfig,
    latents: torch.Tensor,
    text_states: torch.Tensor,
    empty_state: torch.Tensor,
    data: WorldData,
    out_dir: Path,
    device: torch.device,
    name: str = "unet",
    init: Path | None = None,
) -> Path:
    """Train the text-to-image U-Net and save its EMA weights to ``out_dir/name`` (diffusers format).

    With ``init``, training continues from those weights (a fresh optimiser and EMA; the config must match).
    """
    u = cfg.unet
    torch.manual_seed(cfg.seed + 2)
    unet = build_unet(u, text_states.shape[-1], latents.shape[-1], latents.shape[1])
    if init is not None:
        from diffusers import UNet2DConditionModel

        unet.load_state_dict(UNet2DConditionModel.from_pretrained(init, torch_dtype=torch.float32).state_dict())
    unet = unet.to(device)
    make = text_batch(latents, text_states, empty_state, u.caption_dropout, device)
    extra_loss = None
    if u.grounding_weight > 0:
        sink: list[torch.Tensor] = []
        unet.set_attn_processor(
            {k: (GroundingProcessor(sink) if ".attn2." in k else p) for k, p in unet.attn_processors.items()}
        )
        obj_tokens = torch.as_tensor(data.obj_tokens, device=device)
        obj_masks = torch.as_tensor(data.obj_masks, device=device)
        current: dict[str, torch.Tensor] = {}

        def make_and_remember(idx: torch.Tensor, gen: torch.Generator) -> Batch:
            sink.clear()
            current["idx"] = idx
            return make(idx, gen)

        def extra_loss(_loss: torch.Tensor, b: Batch) -> tuple[torch.Tensor, dict]:
            idx = current["idx"]
            masks = obj_masks[idx].float() / 255.0
            token, pixel = grounding_loss(sink, obj_tokens[idx], masks, b.keep, u.grounding_pixel_weight)
            more = u.grounding_weight * token + u.grounding_pixel_weight * pixel
            return more, {"ground": token.item(), "pixel": pixel.item()}

        return diffusion_loop(unet, cfg, make_and_remember, len(latents), out_dir, device, name, extra_loss)
    return diffusion_loop(unet, cfg, make, len(latents), out_dir, device, name)


def _save_resume(path: Path, step: int, unet, opt, ema: Ema, gen: torch.Generator, log: StageLog) -> None:
    """Everything needed to continue a stopped run exactly where it was (run folder only; never committed)."""
    state = {
        "step": step,
        "unet": unet.state_dict(),
        "opt": opt.state_dict(),
        "ema": ema.shadow,
        "ema_n": ema.n,
        "gen": gen.get_state(),
        "elapsed": log.elapsed(),
        "history": log.history,
    }
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def _resume(path: Path, unet, opt, ema: Ema, gen: torch.Generator, log: StageLog) -> int:
    """Load a :func:`_save_resume` state; returns the step to continue from. The time budget counts both runs."""
    state = torch.load(path, weights_only=False)
    unet.load_state_dict(state["unet"])
    opt.load_state_dict(state["opt"])
    ema.shadow, ema.n = state["ema"], state["ema_n"]
    gen.set_state(state["gen"])
    log.start -= state["elapsed"]
    log.history = [tuple(h) for h in state["history"]]
    print(f"[{log.name}] resumed at step {state['step']} ({state['elapsed'] / 60:.1f} min done)", flush=True)
    return int(state["step"])


def _save_ema(unet, ema: Ema, path: Path) -> None:
    from diffusers import UNet2DConditionModel

    export = UNet2DConditionModel.from_config(unet.config)
    ema.copy_to(export)
    export.save_pretrained(path)
