"""OVAM token optimisation: learn the attribution token of a word from a few masks, then map it anywhere.

Marcos-Manchón et al., CVPR 2024, "Open-Vocabulary Attention Maps with Token Optimization for Semantic Segmentation
in Diffusion Models", Sec. 3.3. An OVAM map (:mod:`explain.capture.open_vocabulary`) of word j of an attribution
text c' is the DAAM aggregate of A'_j = softmax(Q K'ᵀ · d^-1/2)[:, j] with K' = W_k c', over the run's layers,
steps and heads. The paper keeps every W_k and every query Q of a few annotated generations fixed and optimises the
token state x = c'_j alone by gradient descent so that the map matches the object's mask:

    x* = argmin_x  Σ_images BCE( M_x / max M_x , mask ),   M_x = mean over (layer, step, head) of ↑A'_j(x)

(↑: bicubic to the latent, clamped at 0, then to the image, as :func:`explain.maps.aggregation.aggregate`).
A second objective (``loss="soft_iou"``, this project's) fits the mask the map is read by instead: DAAM's mask is
min-max(M_x) > τ (Tang et al. 2023, Sec. 4.1), so with the soft mask S = σ((min-max(M_x) − τ) / T),

    x* = argmin_x  Σ_images 1 − |S ∩ mask| / |S ∪ mask|      (|S ∩ m| = Σ S·m, |S ∪ m| = Σ S + m − S·m)

(the soft Jaccard loss; on the embedded model it localises better than the BCE, see
``training/evaluate_open_vocabulary.py``). The learned x* replaces c'_j in later runs (``OpenVocabularyRecorder(..., states=...)``); the image is never changed.

:class:`QueryRecorder` keeps the recorded branch's queries of every cross-attention call (exact: the queries
:func:`explain.capture.op.project` computes, the installed processor computes the output);
:func:`optimize_token` fits x on them. Memory: the queries of every call, 4 · layers · steps · B · N · inner bytes
(the embedded model, 64 px, 25 steps: ~2 MB an image), so this is for a few small training images, not a run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from explain.capture.op import project
from explain.capture.swap import Branch, CrossAttentionSwap, SideProcessor
from explain.diffusion.geometry import Geometry, positions_hw
from explain.maps.aggregation import upsample

__all__ = ["LOSSES", "RecordedQueries", "QueryRecorder", "ovam_token_map", "optimize_token"]

LOSSES = ("bce", "soft_iou")  # optimize_token's objectives (module docstring)


@dataclass(frozen=True, eq=False)  # holds tensors
class RecordedQueries:
    """Queries of one pipeline call.

    Attributes:
        queries: Per cross-attention layer (execution order) float32 ``(calls, B, heads, N, d)``: the recorded
            branch's rows of every U-Net call (``calls`` = steps for one-call-a-step samplers).
        modules: The layers' attention modules (their W_k gives K' = W_k c').
        latent_hw: (h, w) of the latent.
    """

    queries: dict[str, torch.Tensor]
    modules: dict[str, torch.nn.Module]
    latent_hw: tuple[int, int]


class _QueryProcessor(SideProcessor):
    """Runs the installed processor for the output; keeps the branch's queries."""

    def record(self, attn, rows, hidden_states, encoder_hidden_states, temb) -> None:
        with torch.no_grad():
            context = encoder_hidden_states[rows] if encoder_hidden_states is not None else None
            projected = project(attn, hidden_states[rows], context, None if temb is None else temb[rows])
        self.recorder._add(self.name, attn, projected.query.float().cpu())  # (B', heads, N, d)


class QueryRecorder:
    """Context manager: keep every cross-attention layer's queries of the recorded branch (module docstring).

    Args:
        pipe: A Stable Diffusion (XL) pipeline.
        branch: Guidance branch whose rows are kept.
    """

    def __init__(self, pipe, branch: Branch = Branch.COND):
        self.pipe, self.branch = pipe, branch
        self._calls: dict[str, list[torch.Tensor]] = {}
        self._modules: dict[str, torch.nn.Module] = {}
        self._swap = CrossAttentionSwap(pipe.unet, lambda name, original: _QueryProcessor(original, name, self))

    def __enter__(self) -> QueryRecorder:
        self._swap.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._swap.__exit__(*exc_info)

    def _add(self, name: str, attn, query: torch.Tensor) -> None:
        self._calls.setdefault(name, []).append(query)
        self._modules[name] = attn

    def result(self, height: int, width: int) -> RecordedQueries:
        """The queries of the call (``height`` x ``width`` its image size in pixels)."""
        if not self._calls:
            raise RuntimeError("no cross-attention call was recorded: run the pipeline inside the context")
        queries = {name: torch.stack(calls) for name, calls in self._calls.items()}  # (calls, B, heads, N, d)
        latent_hw = Geometry.from_pipeline(self.pipe).latent_hw(height, width)
        return RecordedQueries(queries, dict(self._modules), tuple(latent_hw))


def _keys(attn, states: torch.Tensor) -> torch.Tensor:
    """K' = W_k c' split into heads: (1, heads, T', d), as :func:`explain.capture.op.project` computes K."""
    context = attn.norm_encoder_hidden_states(states) if attn.norm_cross else states
    key = attn.to_k(context)  # (1, T', inner)
    key = key.view(1, -1, attn.heads, key.shape[-1] // attn.heads).transpose(1, 2)
    return attn.norm_k(key) if attn.norm_k is not None else key


def _fold(recorded: RecordedQueries, columns: dict[str, torch.Tensor], image_hw: tuple[int, int]) -> torch.Tensor:
    """Per layer (calls, B, heads, N) probabilities of one column -> (B, H, W): mean over calls and heads, folded to
    the layer's grid and upsampled to the latent; mean over layers, upsampled to ``image_hw`` (DAAM's order)."""
    per_layer = []
    for probs in columns.values():
        column = probs.mean(dim=(0, 2))  # (B, N)
        h, w = positions_hw(recorded.latent_hw, column.shape[-1])
        per_layer.append(upsample(column.view(-1, h, w), recorded.latent_hw))  # (B, h_latent, w_latent)
    return upsample(torch.stack(per_layer).mean(dim=0), image_hw)  # (B, H, W)


def ovam_token_map(
    recorded: RecordedQueries, states: torch.Tensor, token: int, image_hw: tuple[int, int]
) -> torch.Tensor:
    """(B, H, W) OVAM map of column ``token`` of the attribution states (1, T', D): differentiable in ``states``.

    Per layer: softmax(Q K'ᵀ · scale) over the T' columns, column ``token`` (the definition; :func:`optimize_token`
    computes the same column in closed form).
    """
    columns = {}
    for name, query in recorded.queries.items():  # query: (calls, B, heads, N, d)
        attn = recorded.modules[name]
        key = _keys(attn, states.to(query.dtype))[0]  # (heads, T', d)
        logits = torch.einsum("cbhnd,htd->cbhnt", query, key) * attn.scale
        columns[name] = logits.softmax(dim=-1)[..., token]  # (calls, B, heads, N)
    return _fold(recorded, columns, image_hw)


@torch.no_grad()
def _other_columns_lse(recorded: RecordedQueries, states: torch.Tensor, token: int) -> dict[str, torch.Tensor]:
    """Per layer (calls, B, heads, N): log Σ_{t ≠ token} exp(Q K'_tᵀ · scale), which does not depend on c'_token."""
    out = {}
    for name, query in recorded.queries.items():
        attn = recorded.modules[name]
        key = _keys(attn, states.to(query.dtype))[0]  # (heads, T', d)
        others = torch.cat([key[:, :token], key[:, token + 1 :]], dim=1)  # (heads, T' - 1, d)
        out[name] = (torch.einsum("cbhnd,htd->cbhnt", query, others) * attn.scale).logsumexp(dim=-1)
    return out


def _token_column(recorded: RecordedQueries, states: torch.Tensor, token: int, rest: dict) -> dict[str, torch.Tensor]:
    """Per layer softmax column ``token`` as sigmoid(l_token − LSE_rest): p_j = e^{l_j} / (e^{l_j} + Σ_{t≠j} e^{l_t}),
    exact, and only the column that depends on c'_token is recomputed (T' times less work than the softmax)."""
    columns = {}
    for name, query in recorded.queries.items():
        attn = recorded.modules[name]
        key = _keys(attn, states.to(query.dtype))[0, :, token]  # (heads, d)
        logit = torch.einsum("cbhnd,hd->cbhn", query, key) * attn.scale
        columns[name] = torch.sigmoid(logit - rest[name])  # (calls, B, heads, N)
    return columns


def _loss(heat: torch.Tensor, masks: torch.Tensor, loss: str, tau: float, temperature: float) -> torch.Tensor:
    """The objective of the module docstring for maps ``heat`` and {0, 1} ``masks``, both (B, H, W)."""
    tiny = torch.finfo(heat.dtype).tiny
    peak = heat.amax(dim=(-2, -1), keepdim=True)
    if loss == "bce":  # OVAM: BCE of the max-normalised map
        return F.binary_cross_entropy((heat / peak.clamp(min=tiny)).clamp(1e-6, 1 - 1e-6), masks)
    low = heat.amin(dim=(-2, -1), keepdim=True)
    soft = torch.sigmoid(((heat - low) / (peak - low).clamp(min=tiny) - tau) / temperature)  # DAAM's mask, soft
    inter = (soft * masks).sum(dim=(-2, -1))
    union = (soft + masks - soft * masks).sum(dim=(-2, -1))
    return (1 - inter / union.clamp(min=tiny)).mean()


def optimize_token(
    recorded: RecordedQueries,
    states: torch.Tensor,
    token: int,
    masks: torch.Tensor,
    *,
    iterations: int = 100,
    lr: float = 0.1,
    loss: str = "bce",
    tau: float = 0.4,
    temperature: float = 0.05,
) -> tuple[torch.Tensor, list[float]]:
    """Fit column ``token`` of ``states`` (1, T', D) to ``masks`` (B, H, W) {0, 1} (module docstring's objectives:
    ``loss`` "bce" is OVAM's, "soft_iou" the soft Jaccard loss of DAAM's mask at ``tau``, sigmoid ``temperature``).

    The other columns' keys do not depend on c'_token (keys are per token: W_k and, where present, per-token norms),
    so their log-sum-exp is computed once and each iteration evaluates only the token's column.

    Returns:
        (the states with the optimised column (1, T', D), the loss at each iteration).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    masks = masks.float()
    if masks.ndim != 3 or masks.shape[0] != next(iter(recorded.queries.values())).shape[1]:
        raise ValueError(f"masks must be (B, H, W) for the {masks.shape[0]} recorded images, got {tuple(masks.shape)}")
    base = states.detach().float()
    rest = _other_columns_lse(recorded, base, token)
    x = base[0, token].clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    losses = []
    for _ in range(iterations):
        current = torch.cat([base[:, :token], x[None, None], base[:, token + 1 :]], dim=1)  # (1, T', D)
        heat = _fold(recorded, _token_column(recorded, current, token, rest), tuple(masks.shape[-2:]))  # (B, H, W)
        value = _loss(heat, masks, loss, tau, temperature)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(float(value.detach()))
    out = base.clone()
    out[0, token] = x.detach()
    return out.to(states.dtype), losses
