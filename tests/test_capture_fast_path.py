"""The grouped map-making fast paths give the same bits as the per-layer computation they replace.

``AttentionRecorder`` turns the recorded Q/K of all layers of equal shape into maps in one batched product and
stores them group-wise (:mod:`explain.capture.bulk`); ``aggregate`` upsamples and averages layers of one resolution
together and sums word spans by length. The references below are the earlier one-layer-at-a-time code, kept here
verbatim in substance, run on the same recorded Q/K and maps: every comparison is ``torch.equal``.
"""

import pytest
import torch
import torch.nn.functional as F
from diffusers import HeunDiscreteScheduler, StableDiffusionPipeline

from explain.capture.bulk import grouped_probs
from explain.capture.op import probs_from_qk
from explain.capture.recorder import AttentionRecorder
from explain.clip.tokens import tokenize_prompt
from explain.diffusion.geometry import positions_hw
from explain.maps.aggregation import _span_sum, aggregate, select_layers, upsample

PROMPT = "a ginormous red cube beside a teeny blue sphere"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def reference_maps(closed, latent_hw, tokens, per_head, max_resolution=None):
    """The previous ``AttentionRecorder._materialize``: one product per layer, each layer stored on its own."""
    maps = {}
    for name, steps in closed.items():
        calls = [call for step in steps for call in step]
        q = torch.stack([c.q for c in calls])  # (M, B, heads, N, d)
        k = torch.stack([c.k for c in calls])  # (M, B, heads, T, d)
        flat = probs_from_qk(q, k, calls[0].scale)[..., :tokens]  # (M, B, heads, N, tokens)
        flat = (flat if per_head else flat.mean(dim=-3)).transpose(-1, -2)  # (M, B, [heads,] tokens, N)
        counts = {len(step) for step in steps}
        if counts == {1}:
            per_step = flat
        elif len(counts) == 1:
            per_step = torch.stack([c.float() for c in flat]).unflatten(0, (len(steps), counts.pop())).mean(1)
        else:
            at, means = 0, []
            for step in steps:
                means.append(torch.stack([c.float() for c in flat[at : at + len(step)]]).mean(0))
                at += len(step)
            per_step = torch.stack(means)
        h, w = positions_hw(latent_hw, per_step.shape[-1])
        grid = per_step.float().unflatten(-1, (h, w))
        if max_resolution is not None and max(h, w) > max_resolution:
            ratio = max_resolution / max(h, w)
            size = (max(1, round(h * ratio)), max(1, round(w * ratio)))
            grid = F.adaptive_avg_pool2d(grid.flatten(0, -3), size).unflatten(0, grid.shape[:-2])
        maps[name] = grid.to(torch.float16, memory_format=torch.contiguous_format)
    return maps


def reference_aggregate(captured, view, steps=slice(None), layers=None, heads=None):
    """The previous ``aggregate``: each layer upsampled and averaged alone, one sum per word."""
    per_layer = []
    for name in select_layers(captured, layers):
        maps = captured.maps[name][steps, 0].float()  # (S, [heads,] T, h, w)
        if captured.per_head:
            maps = (maps if heads is None else maps[:, heads]).flatten(0, 1)
        per_layer.append(upsample(maps, captured.latent_hw).mean(dim=0))
    token_maps = upsample(torch.stack(per_layer).mean(dim=0), captured.image_hw)
    words = [w for w in view.words if max(w.token_indices) < token_maps.shape[0]]
    return token_maps, torch.stack([_span_sum(token_maps, w.token_indices) for w in words])


def record(pipe, steps=3, **recorder_kwargs):
    """(the recorder, not yet materialised; its closed steps' Q/K; the prompt's view)."""
    view = tokenize_prompt(pipe.tokenizer, PROMPT)
    recorder_kwargs.setdefault("token_count", view.n_used)
    with AttentionRecorder(pipe, **recorder_kwargs) as rec:
        pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt",
             callback_on_step_end=rec.callback_on_step_end)  # fmt: skip
    rec._close_step()
    closed = {name: [list(step) for step in steps] for name, steps in rec._closed.items()}
    return rec, closed, view


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "recorder_kwargs",
    [{}, {"per_head": True}, {"max_resolution": 8}, {"token_count": None}],
    ids=["mean", "per_head", "pooled", "all_columns"],
)
def test_grouped_maps_equal_per_layer_maps(pipe, recorder_kwargs, threads):
    rec, closed, _ = record(pipe, **recorder_kwargs)
    shapes = {tuple(steps[0][0].q.shape) for steps in closed.values()}
    assert len(shapes) < len(closed)  # layers really were grouped (16 layers, 4 shapes)
    torch.set_num_threads(threads)
    try:
        captured = rec.result()
        pooling = recorder_kwargs.get("max_resolution")
        expected = reference_maps(closed, captured.latent_hw, captured.token_count, captured.per_head, pooling)
    finally:
        torch.set_num_threads(1)
    assert captured.maps.keys() == expected.keys()
    for name, maps in expected.items():
        assert captured.maps[name].dtype == maps.dtype and captured.maps[name].is_contiguous()
        assert torch.equal(captured.maps[name], maps), name


def test_heun_steps_average_grouped_calls_exactly(pipe):
    components = {**pipe.components, "scheduler": HeunDiscreteScheduler.from_config(pipe.scheduler.config)}
    heun = StableDiffusionPipeline(**components)
    heun.set_progress_bar_config(disable=True)
    rec, closed, _ = record(heun, steps=3)
    captured = rec.result()
    assert captured.calls_per_step == (2, 2, 1)  # unequal calls per step: the general averaging path
    expected = reference_maps(closed, captured.latent_hw, captured.token_count, per_head=False)
    for name, maps in expected.items():
        assert torch.equal(captured.maps[name], maps), name


def test_grouped_probs_match_one_product_per_layer():
    torch.manual_seed(0)

    class Call:
        def __init__(self, n, d, heads=2, t=7, scale=0.125):
            self.q, self.k, self.scale = torch.randn(1, heads, n, d), torch.randn(1, heads, t, d), scale

    calls = {"a": [Call(16, 8) for _ in range(3)], "b": [Call(4, 8)], "c": [Call(16, 8) for _ in range(2)], "d": []}
    got = grouped_probs(calls, lambda probs: probs)
    assert got.keys() == {"a", "b", "c"}
    for name in got:
        q = torch.stack([c.q for c in calls[name]])
        k = torch.stack([c.k for c in calls[name]])
        assert torch.equal(got[name], probs_from_qk(q, k, calls[name][0].scale)), name


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "selection",
    [{}, {"steps": [0, 2]}, {"layers": "up"}, {"heads": [0]}],
    ids=["default", "steps", "layers", "heads"],
)
def test_grouped_aggregate_equals_per_layer_aggregate(pipe, selection, threads):
    rec, _, view = record(pipe, per_head="heads" in selection)
    captured = rec.result()
    if selection.get("layers") == "up":
        selection = {"layers": [n for n in captured.layer_names if n.startswith("up_blocks")][1:]}
    assert any(len(w.token_indices) > 1 for w in view.words)  # multi-token words exercise the span sums
    torch.set_num_threads(threads)
    try:
        token_maps, word_maps = reference_aggregate(captured, view, **selection)
        maps = aggregate(captured, view, **selection)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(maps.token_maps, token_maps)
    assert torch.equal(maps.word_maps, word_maps)
