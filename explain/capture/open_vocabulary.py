"""Maps for any words, not only the prompt's: open-vocabulary attention maps on U-Nets (OVAM).

Marcos-Manchón et al., CVPR 2024, "Open-Vocabulary Attention Maps with Token Optimization for Semantic Segmentation
in Diffusion Models": in every cross-attention layer the run's image queries are matched against the keys of
*another* text, the attribution text c' (its token states from the pipeline's own text encoder):

    A' = softmax(Q K'ᵀ · d^-1/2),   Q = W_q h (the run's, B' x heads x N x d),   K' = W_k c' (heads x T' x d)

The layer output is still computed by the installed processor from the prompt's states, so the image is bit for
bit the one without the recorder; A' is a side computation through :func:`explain.capture.op.project`, recorded
and aggregated exactly as the prompt's maps (:class:`~explain.capture.recorder.AttentionRecorder`,
:func:`explain.maps.aggregation.aggregate` with the attribution text's :class:`~explain.clip.tokens.TokenView`).
With c' = the prompt's own states, A' equals the prompt's cross-attention maps (the test's parity check).

Example:
    >>> words = "cat sky grass"
    >>> with OpenVocabularyRecorder(pipe, words) as ovam:
    ...     image = pipe(prompt, callback_on_step_end=ovam.callback_on_step_end).images[0]
    >>> maps = aggregate(ovam.result(), ovam.view)   # maps.word_map("sky"), whether or not "sky" is in the prompt
"""

from __future__ import annotations

import torch

from explain.capture.recorder import AttentionRecorder
from explain.capture.swap import CrossAttentionSwap, SideProcessor
from explain.clip.tokens import TokenView, tokenize_prompt

__all__ = ["METHOD", "attribution_states", "OpenVocabularyRecorder"]

METHOD = "ovam"  # the name written with its maps (concepts.npz "method")


@torch.no_grad()
def attribution_states(pipe, text: str) -> torch.Tensor:
    """(1, T', D) token states of ``text`` as the U-Net gets a prompt's (``pipe.encode_prompt``, no guidance)."""
    return pipe.encode_prompt(
        prompt=text, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )[0]


class _OpenVocabularyProcessor(SideProcessor):
    """Runs the installed processor for the output; records softmax(Q K'ᵀ · scale) against the attribution text."""

    def record(self, attn, rows, hidden_states, encoder_hidden_states, temb) -> None:
        self.recorder._guided = rows.stop - rows.start < hidden_states.shape[0]
        states = self.recorder.states.to(hidden_states.device, hidden_states.dtype)  # (1, T', D)
        states = states.expand(hidden_states.shape[0], *states.shape[1:])  # (B, T', D): the same text for every row
        self.recorder._record(
            self.name, attn, rows, hidden_states, states, None, temb
        )  # no mask: c' has no padding mask


class OpenVocabularyRecorder(AttentionRecorder):
    """An :class:`AttentionRecorder` whose keys come from an attribution text instead of the prompt (OVAM).

    Pass ``rec.callback_on_step_end`` to the pipeline as for the prompt's recorder; both can record one run (nested
    processors: each lets the installed one compute the output).

    Args:
        pipe: A Stable Diffusion (XL) pipeline.
        text: The attribution text (any words; BOS..EOS columns are kept, as ``tokenize_prompt(...).n_used``).
        states: (1, T', D) token states to use instead of encoding ``text`` (:func:`attribution_states`).
        **kwargs: :class:`AttentionRecorder` arguments (branch, per_head, max_resolution, height, width, ...).
    """

    def __init__(self, pipe, text: str, *, states: torch.Tensor | None = None, **kwargs):
        self.view: TokenView = tokenize_prompt(pipe.tokenizer, text)
        kwargs.setdefault("token_count", self.view.n_used)
        super().__init__(pipe, **kwargs)
        self.text = text
        self.states = attribution_states(pipe, text) if states is None else states
        self._swap = CrossAttentionSwap(
            pipe.unet, lambda name, original: _OpenVocabularyProcessor(original, name, self)
        )
