"""demo.guard's number messages, without a server: the field, its range in full, what came."""

import math

import gradio as gr
import pytest

from demo.common import seed_input
from demo.guard import check_number, check_value
from explain.engine.requests import MAX_SEED


def _message(check, *args) -> str:
    with pytest.raises(gr.Error) as info:
        check(*args)
    return info.value.message


@pytest.mark.parametrize(
    ("value", "got"),
    [
        (-1, "got -1 (less than minimum value 0)."),
        (MAX_SEED + 1, "got 4294967296 (greater than maximum value 4294967295)."),
        (1e30, "got 1e+30 (greater than maximum value 4294967295)."),
        (math.nan, "got nan."),
        (None, "got nothing (null)."),
        ("five", "got 'five'."),
    ],
)
def test_a_seed_field_states_the_whole_range(value, got):
    with gr.Blocks():
        seed = seed_input(label="Noise seed")
    assert (seed.minimum, seed.maximum, seed.precision) == (0, MAX_SEED, 0)
    assert _message(check_value, seed, value) == f"Noise seed must be a number from 0 to 4294967295; {got}"


def test_ranges_keep_fractions_and_unbounded_sides():
    assert _message(check_number, 0.01, "strength", 0.05, 1.0) == (
        "strength must be a number from 0.05 to 1; got 0.01 (less than minimum value 0.05)."
    )
    assert _message(check_number, 2.0**60, "Seed", 0, None).startswith(
        "Seed must be a number from 0 to ∞; got 1.15292e+18 (beyond ±2^53"
    )
    check_number(MAX_SEED, "Seed", 0, MAX_SEED)  # the largest seed is taken
