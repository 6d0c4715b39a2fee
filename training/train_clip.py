"""Stage 1: contrastive training of the tiny CLIP (Radford et al. 2021), with the seed's symmetric loss.

The loss is explain/'s implementation of the CLIP pseudocode (explain.clip.contrastive.contrastive_loss), which the
test-suite cross-checks against open_clip's ``ClipLoss``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from explain.clip.contrastive import contrastive_loss
from training.common import StageLog, autocast, lr_at
from training.config import TrainConfig
from training.data import WorldData
from training.models import build_clip, zero_unused_token_rows

__all__ = ["train_clip", "images_to_tensor", "tokenize", "retrieval_top1", "ShortText", "init_from", "save_warm_start"]


def images_to_tensor(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1] (CLIP preprocessing with mean = std = 0.5)."""
    x = torch.as_tensor(images, device=device)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tokenize(captions: list[str], context_length: int = 77) -> torch.Tensor:
    """CLIP BPE ids, (N, context_length), padded with 0 as open_clip (and our CLIPTokenizer, pad '!') do."""
    return open_clip.tokenizer.tokenize(captions, context_length=context_length)


@torch.no_grad()
def retrieval_top1(model: open_clip.CLIP, images: torch.Tensor, tokens: torch.Tensor) -> tuple[float, float]:
    """Caption retrieval among the batch: (image->text top-1, text->image top-1)."""
    model.eval()
    i_e = F.normalize(model.encode_image(images), dim=-1)
    t_e = F.normalize(model.encode_text(tokens), dim=-1)
    sim = i_e @ t_e.T  # (N, N)
    labels = torch.arange(len(sim), device=sim.device)
    return (sim.argmax(1) == labels).float().mean().item(), (sim.argmax(0) == labels).float().mean().item()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("positional_embedding"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass(frozen=True)
class ShortText:
    """The text tower trained on the ids and positions the captions use, exactly.

    Two facts make it exact: the tower is causal, so no state at or before end-of-text depends on a later
    position, and the loss reads only the pooled end-of-text state; and token rows no caption uses get no
    gradient (the embedding and positional tables are outside weight decay). So a CLIP with a vocabulary of the
    ``V`` used ids (renumbered in id order: padding stays 0, end-of-text stays the largest, so ``argmax``
    pooling still finds it) and a context of the longest caption ``L`` computes the same loss and gradients as
    the 49 408 x 77 one, at a fraction of the cost (the dense embedding gradient and its AdamW update alone
    are 12.6 M values per step). :meth:`write_back` puts the trained rows and positions into the full model.
    """

    used: torch.Tensor  # [V] BPE ids in increasing order
    length: int  # L: tokens of the longest caption, start and end of text included

    @classmethod
    def of(cls, tokens: torch.Tensor) -> ShortText:
        """From the (N, 77) padded ids of the training captions and the empty caption."""
        used = torch.unique(tokens)  # sorted
        length = int((tokens != 0).sum(dim=1).max())
        return cls(used, length)

    def compact(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, 77) BPE ids -> (N, L) ids in 0..V-1."""
        return torch.searchsorted(self.used.to(tokens.device), tokens[:, : self.length].contiguous())

    def model(self, full: open_clip.CLIP, cfg) -> open_clip.CLIP:
        """A copy of ``full`` with a ``V``-row token table and an ``L``-slot context (the full model's values)."""
        short = build_clip(replace(cfg, vocab_size=len(self.used), context_length=self.length))
        state = full.state_dict()
        state["token_embedding.weight"] = state["token_embedding.weight"][self.used]
        state["positional_embedding"] = state["positional_embedding"][: self.length]
        short.load_state_dict(state)
        return short

    @torch.no_grad()
    def write_back(self, short: open_clip.CLIP, full: open_clip.CLIP) -> None:
        """Copy everything ``short`` learned into ``full`` (rows to their ids, positions to the first ``L``)."""
        state = short.state_dict()
        full.token_embedding.weight[self.used.to(full.token_embedding.weight.device)] = state.pop(
            "token_embedding.weight"
        ).to(full.token_embedding.weight)
        full.positional_embedding[: self.length] = state.pop("positional_embedding")
        full.load_state_dict(state, strict=False)


USED_IDS_KEY = "token_embedding.used_ids"  # save_warm_start: the ids of the token rows it keeps


@torch.no_grad()
def save_warm_start(model: open_clip.CLIP, path: Path) -> Path:
    """Save ``model`` as a float16 warm start for :func:`init_from`, keeping only the token rows that are not zero.

    Rows of tokens the world never uses are zero (:func:`training.models.zero_unused_token_rows`: no gradient
    reaches them), so the 49 408-row table shrinks to the few hundred the captions use, stored with their ids
    (``USED_IDS_KEY``); :func:`init_from` puts them back. Everything else is the open_clip state dict.
    """
    state = {k: v.detach().half().cpu().contiguous() for k, v in model.state_dict().items()}
    table = state.pop("token_embedding.weight")  # (vocab, width)
    used = torch.nonzero(table.abs().sum(dim=1)).flatten()  # (V,) ids, increasing
    state["token_embedding.weight"] = table[used].contiguous()  # (V, width)
    state[USED_IDS_KEY] = used
    save_file(state, path)
    return path


@torch.no_grad()
def init_from(model: open_clip.CLIP, source: Path) -> list[str]:
    """Warm-start ``model`` from another CLIP: a pipeline directory with ``clip/``, a ``clip.safetensors`` or a file
    of :func:`save_warm_start`.

    Tensors of equal shape are copied. A patch embedding of twice the patch size gets the source kernel
    upsampled (nearest, / 4): on a 2x larger image that computes exactly what the source computed on the 2x2
    average-pooled image, so the shapes model's CLIP (64 px, patch 8) starts world v2's (128 px, patch 16).
    Returns the keys left at their fresh initialisation.
    """
    from safetensors.torch import load_file

    if source.is_dir():
        from explain.clip.model import load_clip

        state = load_clip(source).model.state_dict()
    else:
        state = load_file(source)
    own = model.state_dict()
    if USED_IDS_KEY in state:  # a warm start saved by save_warm_start: its token rows go back to their ids
        table = torch.zeros_like(own["token_embedding.weight"])  # (vocab, width)
        table[state.pop(USED_IDS_KEY)] = state["token_embedding.weight"].to(table.dtype)
        state["token_embedding.weight"] = table
    fresh = []
    for k, v in own.items():
        src = state.get(k)
        if src is not None and src.shape == v.shape:
            v.copy_(src)
        elif src is not None and k == "visual.conv1.weight" and src.shape[-1] * 2 == v.shape[-1]:
            v.copy_(src.repeat_interleave(2, -1).repeat_interleave(2, -2) / 4)
        else:
            fresh.append(k)
    return fresh


def train_clip(
    cfg: TrainConfig, data: WorldData, val: WorldData, out_dir: Path, device: torch.device, init: Path | None = None
) -> Path:
    """Train and save ``out_dir/clip.safetensors`` (whole open_clip state dict) and ``clip_config.json``.

    With ``init``, training starts from that CLIP (:func:`init_from`)."""
    c = cfg.clip
    torch.manual_seed(cfg.seed)
    model = build_clip(c)
    if init is not None:
        print(f"[clip] warm start from {init}; fresh: {init_from(model, init)}", flush=True)
    tokens = tokenize(data.captions, c.context_length)
    used = torch.unique(torch.cat([tokens.flatten(), tokenize([""]).flatten()]))
    zero_unused_token_rows(model, used)
    short_text = ShortText.of(torch.cat([tokens, tokenize([""])]))
    print(f"[clip] training on {len(short_text.used)} token ids x {short_text.length} positions", flush=True)
    full, model = model, short_text.model(model, c).to(device)
    tokens = short_text.compact(tokens).to(device)  # (N, L)
    images = torch.as_tensor(data.images, device=device)
    val_images = images_to_tensor(val.images[:256], device)
    val_tokens = tokenize(val.captions[:256], c.context_length)

    opt = torch.optim.AdamW(_param_groups(model, c.weight_decay), lr=c.lr, betas=(0.9, 0.98), eps=1e-6)
    log = StageLog("clip", out_dir, c.steps, cfg.time_budget_s.get("clip"))
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    max_logit = float(np.log(100.0))
    for step in range(c.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(log.effective_step(step), c.steps, c.lr, c.warmup)
        idx = torch.randint(0, len(tokens), (c.batch_size,), generator=gen).to(device)
        model.train()
        with autocast(device):
            i_e = F.normalize(model.encode_image(images_to_tensor(images[idx], device)), dim=-1)  # (B, D)
            t_e = F.normalize(model.encode_text(tokens[idx]), dim=-1)  # (B, D)
        loss = contrastive_loss(i_e.float(), t_e.float(), model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_logit)
        log.log(step, loss.item(), every=100, t=model.logit_scale.exp().item())
        if log.over_budget():
            break
    short_text.write_back(model.cpu(), full)
    model = full.to(device)
    val_tokens = val_tokens.to(device)
    i2t, t2i = retrieval_top1(model, val_images, val_tokens)
    print(f"[clip] val retrieval top-1 image->text {i2t:.3f} text->image {t2i:.3f}", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}, out_dir / "clip.safetensors"
    )
    (out_dir / "clip_config.json").write_text(json.dumps({"embed_dim": c.embed_dim, "clip": c.__dict__}, indent=1))
    log.save(val_top1_image_to_text=i2t, val_top1_text_to_image=t2i)
    return out_dir / "clip.safetensors"
