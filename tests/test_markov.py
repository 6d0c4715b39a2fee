"""The toy weather chain: exact distributions, stationary law, sampling frequencies, validation."""

import numpy as np
import pytest

from explain.diffusion.markov import MarkovChain, WeatherChain

# Two-sided z bound for statistical checks: P(|Z| > 5) ~ 6e-7 per check, so a fixed-seed failure means a bug.
Z = 5.0
STATIONARY = np.array([4 / 7, 3 / 7])
LAMBDA_2 = 0.7 + 0.6 - 1  # second eigenvalue of a 2x2 stochastic matrix: trace - 1


def test_weather_chain_is_the_seed():
    chain = WeatherChain()
    np.testing.assert_array_equal(chain.transition, [[0.7, 0.3], [0.4, 0.6]])
    assert chain.states == ("rainy", "sunny")


def test_stationary_is_exact_left_eigenvector():
    chain = WeatherChain()
    pi = chain.stationary()
    np.testing.assert_allclose(pi, STATIONARY, atol=1e-12)
    np.testing.assert_allclose(pi @ chain.transition, pi, atol=1e-12)
    assert chain.second_eigenvalue_modulus() == pytest.approx(LAMBDA_2, abs=1e-12)


def test_distribution_after_matches_closed_form():
    # From "rainy": p_t(rainy) = 4/7 + (3/7) * 0.3^t (spectral decomposition of P).
    T = 25
    dist = WeatherChain().distribution_after(T, "rainy")
    t = np.arange(T + 1)
    expected_rainy = STATIONARY[0] + (1 - STATIONARY[0]) * LAMBDA_2**t
    assert dist.probs.shape == (T + 1, 2)
    np.testing.assert_allclose(dist.probs[:, 0], expected_rainy, atol=1e-12)
    np.testing.assert_allclose(dist.probs.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(dist.probs[1], [0.7, 0.3], atol=1e-15)
    np.testing.assert_allclose(dist.probs[2], [0.61, 0.39], atol=1e-12)
    np.testing.assert_allclose(dist.tv_to_stationary, (3 / 7) * LAMBDA_2**t, atol=1e-12)
    np.testing.assert_allclose(dist.probs[-1], STATIONARY, atol=1e-12)


def test_distribution_from_stationary_stays_put_and_from_sunny_converges():
    chain = WeatherChain()
    still = chain.distribution_after(10, STATIONARY)
    np.testing.assert_allclose(still.probs, np.tile(STATIONARY, (11, 1)), atol=1e-12)
    from_sunny = chain.distribution_after(40, "sunny")
    np.testing.assert_allclose(from_sunny.probs[0], [0, 1])
    np.testing.assert_allclose(from_sunny.probs[-1], STATIONARY, atol=1e-12)


def test_sampled_frequencies_match_exact_distribution():
    chain = WeatherChain()
    n, T = 20_000, 12
    sample = chain.sample_paths(n, T, "rainy", np.random.default_rng(0))
    assert sample.states.shape == (n, T + 1)
    assert np.all(sample.states[:, 0] == 0)
    exact = chain.distribution_after(T, "rainy").probs
    se = np.sqrt(exact * (1 - exact) / n) + 1e-12  # binomial standard error per step
    assert np.all(np.abs(sample.frequencies - exact) <= Z * se)


def test_sampled_transitions_match_matrix():
    chain = WeatherChain()
    sample = chain.sample_paths(2_000, 50, "sunny", np.random.default_rng(1))
    now, nxt = sample.states[:, :-1].ravel(), sample.states[:, 1:].ravel()
    for i in range(2):
        from_i = nxt[now == i]
        p_hat = np.bincount(from_i, minlength=2) / from_i.size
        se = np.sqrt(chain.transition[i] * (1 - chain.transition[i]) / from_i.size)
        assert np.all(np.abs(p_hat - chain.transition[i]) <= Z * se)


def test_sampling_is_reproducible_and_start_distribution_is_used():
    chain = WeatherChain()
    a = chain.sample_paths(100, 5, "rainy", np.random.default_rng(7))
    b = chain.sample_paths(100, 5, "rainy", np.random.default_rng(7))
    np.testing.assert_array_equal(a.states, b.states)
    n = 20_000
    start = chain.sample_paths(n, 0, STATIONARY, np.random.default_rng(2))
    se = np.sqrt(STATIONARY * (1 - STATIONARY) / n)
    assert np.all(np.abs(start.frequencies[0] - STATIONARY) <= Z * se)


def test_generic_three_state_chain():
    P = np.array([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6]])
    chain = MarkovChain(P, ("a", "b", "c"))
    pi = chain.stationary()
    np.testing.assert_allclose(pi @ P, pi, atol=1e-12)
    np.testing.assert_allclose(np.linalg.matrix_power(P, 200)[0], pi, atol=1e-12)
    np.testing.assert_allclose(chain.distribution_after(200, "b").probs[-1], pi, atol=1e-12)


@pytest.mark.parametrize(
    ("matrix", "states", "match"),
    [
        ([[0.7, 0.2], [0.4, 0.6]], ("r", "s"), r"row\(s\) \[0\] sum to"),
        ([[0.7, 0.3, 0.0]], ("r",), "square"),
        ([[1.2, -0.2], [0.4, 0.6]], ("r", "s"), ">= 0"),
        ([[0.7, 0.3], [0.4, 0.6]], ("r", "s", "x"), "3 state names for a 2-state"),
    ],
)
def test_invalid_matrices_raise_clear_errors(matrix, states, match):
    with pytest.raises(ValueError, match=match):
        MarkovChain(np.array(matrix), states)


def test_reducible_chain_has_no_unique_stationary_law():
    chain = MarkovChain(np.eye(2), ("a", "b"))
    with pytest.raises(ValueError, match="not simple"):
        chain.stationary()


def test_bad_start_and_sizes_raise():
    chain = WeatherChain()
    with pytest.raises(ValueError, match="unknown state"):
        chain.distribution_after(3, "snowy")
    with pytest.raises(ValueError, match="summing to 1"):
        chain.distribution_after(3, [0.5, 0.6])
    with pytest.raises(ValueError, match="n_paths"):
        chain.sample_paths(0, 3, "rainy", np.random.default_rng(0))
