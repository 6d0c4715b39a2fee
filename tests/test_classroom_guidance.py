"""Classroom: one step's classifier-free guidance taken apart, and put back together exactly."""

import numpy as np
import pytest
import torch
from tiny_pipelines import single_thread

from explain.engine.guidance import PART_NAMES, guidance_parts
from explain.engine.session import request_pipeline

PROMPT = "a red circle on the left and a blue square on the right"
NEGATIVE = "green star"
STEPS = 4
GUIDANCE = 5.0
TOL = 1e-5
# (scheduler, step): DDIM and Euler return their own x̂₀ to compare with; DPM-Solver++ (the embedded model's own)
# keeps a multistep history, so stepping it from step 2 needs the state copied at step 1.
CASES = [("DDIM", 2), ("Euler", 0), ("default", 2)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module", params=CASES, ids=[f"{s}-step{k}" for s, k in CASES])
def taken_apart(request, engine):
    scheduler, k = request.param
    pipe = request_pipeline(engine.pipeline(), scheduler)
    parts = guidance_parts(
        pipe, PROMPT, k, negative_prompt=NEGATIVE, steps=STEPS, guidance=GUIDANCE, preview=engine.latent_preview()
    )
    return pipe, parts


def test_parts_recombine_and_the_step_reproduces_the_pipeline(taken_apart):
    _, parts = taken_apart
    assert tuple(p.name for p in parts.parts) == PART_NAMES
    assert parts.recombination_error < TOL
    assert parts.stepped is not None and parts.step_error < TOL  # the pipeline's own next latents
    g = parts.guidance
    affine = parts.uncond.x0 + g * (parts.cond.x0 - parts.uncond.x0)  # x̂₀ is affine in ε: guidance extrapolates x̂₀
    torch.testing.assert_close(affine, parts.guided.x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(parts.difference.x0, parts.cond.x0 - parts.uncond.x0)
    if parts.scheduler_x0 is not None:  # the scheduler's own pred_original_sample agrees with ours
        torch.testing.assert_close(parts.scheduler_x0, parts.guided.x0, atol=1e-4, rtol=0)
    height, width = parts.image.shape[:2]
    for part in parts.parts:
        assert part.image.shape == part.output_image.shape == (height, width, 3) and part.image.dtype == np.uint8
    assert 0 < parts.difference.rms < parts.cond.rms


def test_each_half_alone_gives_the_same_prediction(taken_apart):
    pipe, parts = taken_apart
    embeds = pipe.encode_prompt(PROMPT, pipe.device, 1, True, NEGATIVE)  # (positive, negative)
    with torch.no_grad():
        for half, part in zip(embeds[::-1], (parts.uncond, parts.cond), strict=True):
            alone = pipe.unet(parts.model_input, parts.timestep, encoder_hidden_states=half).sample
            torch.testing.assert_close(alone, part.output, atol=1e-4, rtol=0)


def test_negative_words_have_maps_from_the_unconditional_branch(taken_apart):
    _, parts = taken_apart
    assert parts.negative_words == ("green", "star")
    assert parts.negative_maps.shape == (2, *parts.image.shape[:2]) and (parts.negative_maps >= 0).all()
    assert (
        parts.negative_attention.branch.value == "uncond" and parts.negative_attention.n_steps == parts.run.steps_done
    )


def test_bad_requests_are_refused_before_running(engine):
    pipe = engine.pipeline()
    with pytest.raises(ValueError, match="above 1"):
        guidance_parts(pipe, PROMPT, 0, steps=STEPS, guidance=1.0)
    with pytest.raises(ValueError, match="step"):
        guidance_parts(pipe, PROMPT, STEPS, steps=STEPS, guidance=GUIDANCE)
