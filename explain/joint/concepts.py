"""ConceptAttention maps (Helbling et al., ICML 2025, "ConceptAttention: Diffusion Transformers Learn Highly
Interpretable Features", arXiv:2502.04320): maps in the attention *output* space, for any words, image unchanged.

Concept tokens c (one per word; not part of the prompt) get their own residual stream through the joint blocks
(SD3 blocks, Flux double-stream blocks), updated by the *text* stream's weights of each block: its AdaLN
modulation, ``add_{q,k,v}_proj`` + QK norms, ``to_add_out`` and ``ff_context``. The paper's equations, in its
notation (x image tokens, p prompt tokens, c concept tokens, one head, d head width):

    [o_x; o_p] = softmax([q_x; q_p] [k_x; k_p]ᵀ / √d) [v_x; v_p]   the model's joint attention, untouched
    o_c = softmax(q_c [k_x; k_c]ᵀ / √d) [v_x; v_c]                   concept attention: one-directional, concepts
                                                                      read the image and each other, the image
                                                                      never reads the concepts
    φ(x, c) = o_x · o_cᵀ                                             the output-space saliency of a layer
    map(c) = softmax_c( mean over layers and steps of φ )            normalised over the concept set

with o_x the image tokens' output of the model's own joint attention (:mod:`explain.joint.processors`, before the
output projection, as in the authors' reference implementation for Flux). The paper contrasts φ with the raw
cross-attention reading softmax(q_x k_cᵀ / √d) and finds output-space maps "significantly sharper" (its abstract;
zero-shot ImageNet-Segmentation and PascalVOC results); :mod:`explain.joint.attention_maps` gives the raw
joint-attention reading of the prompt's own tokens.

Concept embeddings follow the reference implementation: each word is encoded on its own by the pipeline's T5 and
its first token kept (SD3 without T5: CLIP's first token after BOS); the concept stream's time embedding uses
the step's timestep with a zero pooled text vector. Flux single-stream blocks carry no concept stream (the paper
uses the double-stream blocks).

Memory law: 4 · n_joint_layers · S' · B' · H' · C · N bytes (S' = steps or 1, H' = heads or 1) accumulated on the
model's device; transiently, at most ``work_bytes`` of the model's image keys, values and outputs kept for the
deferred stream (see :class:`ConceptAttentionRecorder`) and the streams of the steps kept, S · B' · C · width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from explain.joint.capture import Branch, Family, JointCall, JointCapture, LayerKind, family_of, grid_hw

__all__ = ["ConceptMaps", "ConceptAttentionRecorder", "concept_embeddings", "concept_held_bytes"]

# FluxPipeline passes timestep / 1000; FluxTransformer2DModel multiplies timestep and guidance by 1000.
FLUX_TIMESTEP_SCALE = 1000


def concept_held_bytes(n_joint_layers: int, n_image: int, n_concepts: int, *, steps=1, heads=1, batch=1) -> int:
    """The memory law above: float32 bytes a :class:`ConceptAttentionRecorder` holds (besides one call's stream)."""
    return 4 * n_joint_layers * steps * batch * heads * n_concepts * n_image


@torch.no_grad()
def concept_embeddings(pipe, concepts: Sequence[str], max_sequence_length: int | None = None) -> torch.Tensor:
    """(C, joint_attention_dim): each concept encoded alone, its first T5 token (the reference implementation's
    choice; SD3 without T5: CLIP's first token after BOS)."""
    if not concepts:
        raise ValueError("give at least one concept word")
    kwargs = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
    rows = []
    for concept in concepts:
        if family_of(pipe) is Family.FLUX:
            embeds, _, _ = pipe.encode_prompt(prompt=concept, prompt_2=concept, **kwargs)
            rows.append(embeds[0, 0])
        else:
            embeds, _, _, _ = pipe.encode_prompt(
                prompt=concept, prompt_2=concept, prompt_3=concept, do_classifier_free_guidance=False, **kwargs
            )  # (1, 77 + T5 slots, D)
            first = pipe.tokenizer_max_length if pipe.text_encoder_3 is not None else 1
            rows.append(embeds[0, first])
    return torch.stack(rows)


@dataclass(frozen=True, eq=False)  # holds tensors
class ConceptMaps:
    """ConceptAttention scores of one generation.

    Attributes:
        scores: Per joint layer float32 CPU ``(S', B, H', C, h, w)``: φ = o_x · o_c, summed over heads unless
            ``per_head`` (then per head: the head slices' dot products, which sum to φ); mean over steps unless
            ``per_step``.
        concepts: The concept words C.
        grid_hw: (h, w) of the image-token grid.
        image_hw: (H, W) in pixels.
        timesteps: Timestep of each recorded step.
        per_step: Whether steps are kept.
        per_head: Whether heads are kept.
    """

    scores: dict[str, torch.Tensor]
    concepts: tuple[str, ...]
    grid_hw: tuple[int, int]
    image_hw: tuple[int, int]
    timesteps: tuple[float, ...]
    per_step: bool
    per_head: bool

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self.scores)

    def maps(self, layers=None, softmax: bool = True) -> torch.Tensor:
        """(B, C, h, w): φ summed over heads, averaged over the chosen layers and the steps, softmax over concepts."""
        names = self.layer_names if layers is None else tuple(layers)
        phi = torch.stack([self.scores[name].sum(dim=2).mean(dim=0) for name in names]).mean(dim=0)  # (B, C, h, w)
        return phi.softmax(dim=1) if softmax else phi

    def concept_map(self, concept: str, layers=None, softmax: bool = True) -> torch.Tensor:
        """(B, h, w) of one concept."""
        return self.maps(layers, softmax)[:, self.concepts.index(concept)]


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, C, heads*d) -> (B, heads, C, d)."""
    return x.unflatten(-1, (-1, head_dim)).transpose(1, 2)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along the batch, without a copy for a single part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _held_bytes(*tensors: torch.Tensor) -> int:
    """Bytes a reference to these tensors keeps alive (their whole storages: views hold their base)."""
    return sum(t.untyped_storage().nbytes() for t in tensors)


@dataclass(frozen=True, eq=False)  # holds tensors
class _Deferred:
    """One joint layer call of one step, kept until the concept stream is advanced through it.

    Attributes:
        step: Recorded step.
        name: Layer path.
        attn: The attention module.
        key: (B', heads, N, d) image keys of the call (a view).
        value: (B', heads, N, d) image values (a view).
        out: (B', N, heads*d) image outputs of the model's joint attention (a view), None where φ is not recorded.
    """

    step: int
    name: str
    attn: torch.nn.Module
    key: torch.Tensor
    value: torch.Tensor
    out: torch.Tensor | None


class ConceptAttentionRecorder:
    """Context manager running concept tokens through the joint blocks beside the image; see the module docstring.

    The concept stream does not feed back into the model, so it need not run while the model does: each layer
    call's image keys, values and outputs are kept (references, at most ``work_bytes``) and the stream is advanced
    through a layer for all kept steps at once (the steps are a batch: one set of ops per layer instead of one per
    layer and step; on the tiny test models the per-op cost is what the stream costs). A step whose calls alone pass
    ``work_bytes`` (real models at full size) is advanced layer by layer as the model runs.

    Args:
        pipe: ``StableDiffusion3Pipeline`` or ``FluxPipeline``.
        concepts: Words to map (the prompt's words, or any others).
        per_step: Keep steps instead of their mean.
        per_head: Keep heads instead of summing them.
        height: Image height in pixels (default: the pipeline's default size).
        width: Image width in pixels.
        branch: Guidance branch (SD3 under CFG: ``COND`` or ``UNCOND``; Flux: ``COND``).
        max_sequence_length: T5 slots used to encode the concepts (default: the pipeline's default).
        embeddings: (C, joint_attention_dim) encoder-space concept embeddings to use instead of encoding the words.
        pooled: (pooled_projection_dim,) pooled text vector for the concept stream's time embedding (default:
            zeros, as the reference implementation).
        layers: Joint layers whose φ to record (default: all; the stream runs up to the last of them).
        work_bytes: Bound on the bytes of the model's tensors kept for the deferred stream.
    """

    def __init__(
        self,
        pipe,
        concepts: Sequence[str],
        *,
        per_step: bool = False,
        per_head: bool = False,
        height: int | None = None,
        width: int | None = None,
        branch: Branch = Branch.COND,
        max_sequence_length: int | None = None,
        embeddings: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        layers: Sequence[str] | None = None,
        work_bytes: int = 64 * 2**20,
    ):
        self.pipe = pipe
        self.concepts = tuple(concepts)
        self.per_step = per_step
        self.per_head = per_head
        default = pipe.default_sample_size * pipe.vae_scale_factor
        self.image_hw = (height or default, width or default)
        self.grid_hw = grid_hw(pipe, *self.image_hw)
        self.capture = JointCapture(pipe, self, branch=branch)
        if embeddings is None:
            embeddings = concept_embeddings(pipe, self.concepts, max_sequence_length)
        if embeddings.shape[0] != len(self.concepts):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(self.concepts)} concepts")
        self.embeddings = embeddings  # (C, D)
        self.pooled = pooled
        self.layers = None if layers is None else tuple(layers)
        self.work_bytes = work_bytes
        self._start: torch.Tensor | None = None  # (B', C, width) context_embedder(embeddings)
        self._timesteps: dict[int, torch.Tensor] = {}  # step -> its timestep, until its stream starts
        self._deferred: list[_Deferred] = []
        self._deferred_bytes = 0
        self._streams: dict[int, torch.Tensor] = {}  # step -> (B', C, width) stream after its last advanced layer
        self._tembs: dict[int, torch.Tensor] = {}  # step -> (B', width) time embedding of its stream
        self._acc: dict[int, dict[str, torch.Tensor]] = {}  # slot -> layer -> summed φ (B', H', C, N)
        self._counts: dict[int, dict[str, int]] = {}

    def __enter__(self) -> ConceptAttentionRecorder:
        self.capture.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.capture.__exit__(*exc_info)

    def bind(self, capture: JointCapture) -> None:
        """Record through ``capture`` (a :class:`JointCapture` shared with other recorders)."""
        joint = [name for name, (_, kind) in capture.layers.items() if kind is LayerKind.JOINT]
        unknown = [] if self.layers is None else [name for name in self.layers if name not in joint]
        if unknown:
            raise ValueError(f"not joint layers: {unknown} (joint layers: {joint})")
        self.capture = capture
        self._recorded = tuple(n for n in joint if self.layers is None or n in self.layers)
        self._last = self._recorded[-1] if self._recorded else None  # the stream is not needed after this layer
        self._run = tuple(joint[: joint.index(self._last) + 1]) if self._last else ()  # layers the stream runs
        self._blocks = {name: capture.transformer.get_submodule(name.rsplit(".", 1)[0]) for name in joint}

    @torch.no_grad()
    def _time_embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(R, width): the transformer's time embedding of per-row ``timesteps`` (R,) (pooled vector: ``pooled``
        or zeros), as the model makes it."""
        transformer = self.pipe.transformer
        param = next(transformer.parameters())
        batch = timesteps.shape[0]
        if self.pooled is None:
            pooled = param.new_zeros(batch, transformer.config.pooled_projection_dim)
        else:
            pooled = self.pooled.to(param.device, param.dtype).expand(batch, -1)
        t = timesteps.to(param.device)
        if self.capture.family is Family.SD3:
            return transformer.time_text_embed(t, pooled)  # SD3: transformer(timestep=t)
        t = (t.to(param.dtype) / FLUX_TIMESTEP_SCALE).to(param.dtype) * FLUX_TIMESTEP_SCALE
        if not transformer.config.guidance_embeds:
            return transformer.time_text_embed(t, pooled)
        guidance = torch.full([batch], self.pipe.guidance_scale, device=param.device).to(param.dtype)
        guidance = guidance * FLUX_TIMESTEP_SCALE
        return transformer.time_text_embed(t, guidance, pooled)

    # -- sink interface (called by JointCapture) ------------------------------------------------------------------
    @torch.no_grad()
    def on_transformer_call(self, step: int, timestep, rows: slice) -> None:
        """A recorded transformer call starts: its step gets a concept stream (started when first advanced)."""
        batch = rows.stop - rows.start
        if self._start is None or self._start.shape[0] != batch:  # the stream's input, the same every call
            self._flush()  # deferred steps were started with the old batch
            transformer = self.pipe.transformer
            param = next(transformer.parameters())
            start = transformer.context_embedder(self.embeddings.to(param.device, param.dtype))  # (C, width)
            self._start = start.unsqueeze(0).expand(batch, *start.shape).contiguous()  # (B', C, width)
        self._timesteps[step] = torch.as_tensor(timestep).reshape(())

    def on_call(self, call: JointCall) -> None:
        if call.kind is not LayerKind.JOINT or call.name not in self._run or call.step not in self._timesteps:
            return
        image, tensors = call.image, call.tensors
        out = tensors.heads_out[:, image] if call.name in self._recorded else None
        self._deferred.append(
            _Deferred(call.step, call.name, call.attn, tensors.key[:, :, image], tensors.value[:, :, image], out)
        )
        self._deferred_bytes += _held_bytes(tensors.key, tensors.value, tensors.heads_out)
        if self._deferred_bytes > self.work_bytes:
            self._flush()

    # -- the deferred stream ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _flush(self) -> None:
        """Advance the concept streams of the deferred steps through their deferred layers, layer by layer, the
        steps of a layer as one batch."""
        deferred, self._deferred, self._deferred_bytes = self._deferred, [], 0
        fresh = sorted({d.step for d in deferred} - set(self._streams))
        if fresh:  # their streams start: one time embedding for all of them
            batch = self._start.shape[0]
            times = torch.stack([self._timesteps[s] for s in fresh]).repeat_interleave(batch)  # (S·B',)
            for step, temb in zip(fresh, self._time_embedding(times).split(batch), strict=True):
                self._streams[step], self._tembs[step] = self._start, temb
        for name in self._run:  # execution order: each step's earlier layers are advanced first
            calls = [d for d in deferred if d.name == name]
            if calls:
                self._advance(name, calls)

    def _advance(self, name: str, calls: list[_Deferred]) -> None:
        steps = [c.step for c in calls]
        batch = self._start.shape[0]
        phi, stream = self._concept_step(
            self._blocks[name],
            calls[0].attn,
            _cat([self._streams[s] for s in steps]),  # (S·B', C, width)
            _cat([self._tembs[s] for s in steps]),
            _cat([c.key for c in calls]),  # (S·B', heads, N, d)
            _cat([c.value for c in calls]),
            None if calls[0].out is None else _cat([c.out for c in calls]),  # (S·B', N, heads*d)
            update=name != self._last,  # later blocks would only update a stream no φ reads
        )
        for i, step in enumerate(steps):
            if stream is None:
                del self._streams[step], self._tembs[step], self._timesteps[step]
            else:
                self._streams[step] = stream[i * batch : (i + 1) * batch]
        if phi is None:
            return
        phi = phi.unflatten(0, (len(steps), batch))  # (S, B', H', C, N)
        groups = [(s, phi[i]) for i, s in enumerate(steps)] if self.per_step else [(0, phi.sum(dim=0))]
        for slot, part in groups:
            acc, counts = self._acc.setdefault(slot, {}), self._counts.setdefault(slot, {})
            if name in acc:
                acc[name].add_(part)
            else:
                acc[name] = part
            counts[name] = counts.get(name, 0) + (1 if self.per_step else len(steps))

    def _concept_step(
        self, block, attn, stream, temb, key, value, out, update: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One block for the concept stream (R = rows of the batch): φ (R, H', C, N) if ``out`` (R, N, heads*d) is
        given, and the updated stream if ``update`` (None after the last block). ``key`` / ``value``: (R, heads,
        N, d) of the image tokens.

        Helbling et al. 2025: o_c = softmax(q_c [k_x; k_c]ᵀ / √d) [v_x; v_c], φ = o_c · o_xᵀ (summed over heads
        unless ``per_head``: one product over the concatenated heads, (C, H·d) x (H·d, N)).
        """
        pre_only = getattr(block, "context_pre_only", False)  # SD3's last block: no text-stream update after it
        if pre_only:
            normed = block.norm1_context(stream, temb)
        else:
            normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(stream, emb=temb)
        head_dim = key.shape[-1]
        q_c = _heads(attn.add_q_proj(normed), head_dim)  # (R, heads, C, d)
        k_c = _heads(attn.add_k_proj(normed), head_dim)
        v_c = _heads(attn.add_v_proj(normed), head_dim)
        if attn.norm_added_q is not None:
            q_c = attn.norm_added_q(q_c)
        if attn.norm_added_k is not None:
            k_c = attn.norm_added_k(k_c)
        keys = torch.cat([key, k_c], dim=2)  # (R, heads, N + C, d)
        values = torch.cat([value, v_c], dim=2)
        o_c = F.scaled_dot_product_attention(q_c, keys, values)  # (R, heads, C, d); Flux: concepts at position 0
        flat = o_c.transpose(1, 2).flatten(2)  # (R, C, heads*d)
        phi = None
        if out is not None and self.per_head:
            o_x = _heads(out, head_dim)  # (R, heads, N, d)
            phi = o_c.float() @ o_x.float().transpose(-1, -2)  # (R, heads, C, N)
        elif out is not None:
            phi = torch.bmm(flat.float(), out.float().transpose(1, 2)).unsqueeze(1)  # (R, 1, C, N)
        if pre_only or not update:
            return phi, None
        stream = stream + gate_msa.unsqueeze(1) * attn.to_add_out(flat)
        normed = block.norm2_context(stream) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        stream = stream + gate_mlp.unsqueeze(1) * block.ff_context(normed)
        return phi, stream

    def result(self) -> ConceptMaps:
        self._flush()
        if not self._acc:
            raise RuntimeError("nothing was recorded: run the pipeline inside `with ConceptAttentionRecorder(...)`")
        h, w = self.grid_hw
        slots = sorted(self._acc)
        scores = {}
        for name in self._recorded:
            means = [self._acc[s][name].cpu() / self._counts[s][name] for s in slots if name in self._acc[s]]
            scores[name] = torch.stack(means).unflatten(-1, (h, w))  # (S', B', H', C, h, w)
        return ConceptMaps(
            scores=scores,
            concepts=self.concepts,
            grid_hw=self.grid_hw,
            image_hw=self.image_hw,
            timesteps=tuple(self.capture.timesteps),
            per_step=self.per_step,
            per_head=self.per_head,
        )
