"""A toy Markov chain: the seed's two-state weather model, before the 1000-step chain of diffusion.

A Markov chain on ``S`` states is a row-stochastic matrix ``P`` (``P[i, j] = Pr(X_{t+1} = j | X_t = i)``): the next
state depends on the current state only. Its marginal distribution evolves as a row vector,
``p_{t+1} = p_t P``, and (for an irreducible, aperiodic chain) converges to the stationary distribution ``pi``, the
left eigenvector of ``P`` for eigenvalue 1 (``pi P = pi``), whatever the start: the chain *forgets its start*.
The distance to ``pi`` shrinks geometrically, like ``|lambda_2|^t`` where ``lambda_2`` is the second-largest
eigenvalue in modulus. The diffusion forward process (:mod:`explain.diffusion.noising`) is the same idea with a Gaussian
transition and ``N(0, I)`` as its limit.

The seed's weather chain (rainy, sunny)::

    P = [[0.7, 0.3],     rainy -> rainy 0.7, rainy -> sunny 0.3
         [0.4, 0.6]]     sunny -> rainy 0.4, sunny -> sunny 0.6
    pi = [4/7, 3/7]      lambda_2 = 0.7 + 0.6 - 1 = 0.3
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "WEATHER_STATES",
    "WEATHER_TRANSITION",
    "MarkovChain",
    "WeatherChain",
    "PathSample",
    "DistributionPath",
]

WEATHER_STATES: tuple[str, ...] = ("rainy", "sunny")
WEATHER_TRANSITION: tuple[tuple[float, ...], ...] = ((0.7, 0.3), (0.4, 0.6))

# Rows of a transition matrix must sum to 1 up to floating-point rounding of a user-typed matrix.
ROW_SUM_ATOL = 1e-9
# Eigenvalues this close to 1 count as "1" when looking for the stationary eigenvector.
UNIT_EIGENVALUE_ATOL = 1e-9


@dataclass(frozen=True, eq=False)
class PathSample:
    """Sampled trajectories of a chain.

    Attributes:
        states: state index of every path at every time, ``(n_paths, T + 1)``; column 0 is the start.
        frequencies: fraction of paths in each state at each time, ``(T + 1, S)``; estimates ``p_t``.
        state_names: the ``S`` state names.
    """

    states: np.ndarray  # (n_paths, T + 1) int
    frequencies: np.ndarray  # (T + 1, S) float
    state_names: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class DistributionPath:
    """The exact marginal distributions ``p_0, p_1, ..., p_T`` with ``p_{t+1} = p_t P``.

    Attributes:
        probs: ``(T + 1, S)``; row ``t`` is ``p_t``.
        stationary: ``pi``, ``(S,)``.
        tv_to_stationary: total variation distance ``0.5 * sum |p_t - pi|`` per step, ``(T + 1,)``.
        second_eigenvalue_modulus: ``|lambda_2|``, the geometric rate at which ``tv_to_stationary`` shrinks.
        state_names: the ``S`` state names.
    """

    probs: np.ndarray  # (T + 1, S)
    stationary: np.ndarray  # (S,)
    tv_to_stationary: np.ndarray  # (T + 1,)
    second_eigenvalue_modulus: float
    state_names: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class MarkovChain:
    """A finite Markov chain given by a row-stochastic transition matrix.

    Args:
        transition: ``(S, S)`` matrix, ``transition[i, j] = Pr(next = j | now = i)``; non-negative, rows sum to 1.
        states: ``S`` state names.

    Raises:
        ValueError: if the matrix is not square, has negative entries, rows that do not sum to 1, or the number of
            names does not match.
    """

    transition: np.ndarray  # (S, S)
    states: tuple[str, ...]

    def __post_init__(self) -> None:
        matrix = np.array(self.transition, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
            raise ValueError(f"transition matrix must be square (S, S), got shape {matrix.shape}")
        if not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
            raise ValueError(f"transition probabilities must be finite and >= 0, got {matrix.tolist()}")
        row_sums = matrix.sum(axis=1)
        bad = np.flatnonzero(np.abs(row_sums - 1.0) > ROW_SUM_ATOL)
        if bad.size:
            raise ValueError(
                f"each row of the transition matrix must sum to 1; row(s) {bad.tolist()} sum to {row_sums[bad].tolist()}"
            )
        states = tuple(str(s) for s in self.states)
        if len(states) != matrix.shape[0]:
            raise ValueError(f"{len(states)} state names for a {matrix.shape[0]}-state matrix")
        matrix.setflags(write=False)
        object.__setattr__(self, "transition", matrix)
        object.__setattr__(self, "states", states)

    @property
    def n_states(self) -> int:
        """Number of states ``S``."""
        return self.transition.shape[0]

    def state_index(self, state: int | str) -> int:
        """Index of a state given by index or by name."""
        if isinstance(state, str):
            if state not in self.states:
                raise ValueError(f"unknown state {state!r}; states are {list(self.states)}")
            return self.states.index(state)
        index = int(state)
        if not 0 <= index < self.n_states:
            raise ValueError(f"state index {index} out of range 0..{self.n_states - 1}")
        return index

    def _as_distribution(self, start: int | str | Sequence[float] | np.ndarray) -> np.ndarray:
        if isinstance(start, (int, np.integer, str)):
            dist = np.zeros(self.n_states)
            dist[self.state_index(start)] = 1.0
            return dist
        dist = np.asarray(start, dtype=np.float64)
        if dist.shape != (self.n_states,) or np.any(dist < 0) or abs(dist.sum() - 1.0) > ROW_SUM_ATOL:
            raise ValueError(f"start distribution must be {self.n_states} non-negative numbers summing to 1")
        return dist

    def stationary(self) -> np.ndarray:
        """The stationary distribution ``pi`` with ``pi P = pi``: the left eigenvector of ``P`` for eigenvalue 1.

        Returns:
            ``(S,)`` probabilities summing to 1 (``[4/7, 3/7]`` for the weather chain).

        Raises:
            ValueError: if eigenvalue 1 is not simple (a reducible chain has no unique stationary distribution).
        """
        eigvals, eigvecs = np.linalg.eig(self.transition.T)  # right eigenvectors of P^T = left eigenvectors of P
        unit = np.flatnonzero(np.abs(eigvals - 1.0) < UNIT_EIGENVALUE_ATOL)
        if unit.size != 1:
            raise ValueError("eigenvalue 1 is not simple: the chain is reducible, its stationary law is not unique")
        vec = np.real(eigvecs[:, unit[0]])
        return vec / vec.sum()

    def second_eigenvalue_modulus(self) -> float:
        """``|lambda_2|``: the second-largest eigenvalue modulus of ``P``, the rate of forgetting the start."""
        moduli = np.sort(np.abs(np.linalg.eigvals(self.transition)))[::-1]
        return float(moduli[1]) if moduli.size > 1 else 0.0

    def distribution_after(self, T: int, start_dist: int | str | Sequence[float] | np.ndarray) -> DistributionPath:
        """Every marginal ``p_0 .. p_T`` from ``p_{t+1} = p_t P`` (Chapman-Kolmogorov, one step at a time).

        Args:
            T: number of steps, ``>= 0``.
            start_dist: ``p_0``, as a distribution ``(S,)``, a state index or a state name (a point mass).

        Returns:
            The distributions, the stationary law and the total-variation distance to it.
        """
        if T < 0:
            raise ValueError(f"T must be >= 0, got {T}")
        probs = np.empty((T + 1, self.n_states))  # (T + 1, S)
        probs[0] = self._as_distribution(start_dist)
        for t in range(T):
            probs[t + 1] = probs[t] @ self.transition  # p_{t+1} = p_t P
        pi = self.stationary()
        tv = 0.5 * np.abs(probs - pi).sum(axis=1)
        return DistributionPath(probs, pi, tv, self.second_eigenvalue_modulus(), self.states)

    def sample_paths(
        self,
        n_paths: int,
        T: int,
        start: int | str | Sequence[float] | np.ndarray,
        rng: np.random.Generator,
    ) -> PathSample:
        """Sample ``n_paths`` independent trajectories ``X_0 .. X_T``.

        Args:
            n_paths: number of trajectories, ``>= 1``.
            T: number of steps, ``>= 0``.
            start: start state (index or name) or a start distribution ``(S,)`` to draw ``X_0`` from.
            rng: numpy random generator (e.g. ``np.random.default_rng(0)``).

        Returns:
            The state paths and the per-step empirical state frequencies.
        """
        if n_paths < 1 or T < 0:
            raise ValueError(f"need n_paths >= 1 and T >= 0, got n_paths={n_paths}, T={T}")
        cumulative = np.cumsum(self.transition, axis=1)[:, :-1]  # (S, S-1) thresholds, last column is 1
        states = np.empty((n_paths, T + 1), dtype=np.int64)
        start_dist = self._as_distribution(start)
        states[:, 0] = rng.choice(self.n_states, size=n_paths, p=start_dist)
        for t in range(T):
            u = rng.random(n_paths)  # (n_paths,)
            states[:, t + 1] = (u[:, None] >= cumulative[states[:, t]]).sum(axis=1)
        counts = np.stack([(states == s).mean(axis=0) for s in range(self.n_states)], axis=1)  # (T + 1, S)
        return PathSample(states, counts, self.states)


@dataclass(frozen=True, eq=False)
class WeatherChain(MarkovChain):
    """The seed's chain: states (rainy, sunny), rows ``[0.7, 0.3]`` and ``[0.4, 0.6]``, stationary ``[4/7, 3/7]``."""

    transition: np.ndarray = field(default_factory=lambda: np.array(WEATHER_TRANSITION))  # (2, 2)
    states: tuple[str, ...] = WEATHER_STATES
