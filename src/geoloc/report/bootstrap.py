"""Bootstrap confidence intervals of recall@k, from the rank of each query's first correct match.

A rank is `first_correct_rank` as evaluate writes it: 1..k, or 0 when no correct database image
is in the top k. Queries (and seeds, when a run was repeated) are the units resampled.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

N_RESAMPLES = 2000
LEVEL = 0.95


def hits_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """True where a correct database image is among the top k."""
    return (ranks >= 1) & (ranks <= k)


def recall_samples(ranks: np.ndarray, k: int, *, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Recall@k in percent of each of `n_resamples` bootstrap resamples.

    `ranks` is (n_seeds, n_queries): the same queries evaluated for each seed of one variant.
    A resample draws queries with replacement (one draw shared by all seeds), then seeds with
    replacement, and averages. The draws depend only on `seed` and the shape, so two variants
    evaluated on the same queries share the query draws and their difference is a paired
    bootstrap.
    """
    ranks = np.atleast_2d(np.asarray(ranks))
    n_seeds, n_queries = ranks.shape
    if n_queries == 0:
        raise ValueError("no queries to resample")
    hits = hits_at(ranks, k)
    per_seed = hits[:, _query_draws(seed, n_queries, n_resamples)].mean(axis=2)
    if n_seeds == 1:
        return 100.0 * per_seed[0]
    rng = np.random.default_rng([seed, n_queries, n_seeds])
    seed_draws = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    return 100.0 * per_seed[seed_draws, np.arange(n_resamples)[:, None]].mean(axis=1)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval holding `level` of the samples."""
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def p_value(samples: np.ndarray, observed: float) -> float:
    """Two-sided p-value of "no difference" for an observed difference and its bootstrap samples.

    From the bootstrap standard error (normal approximation) rather than by counting resamples on
    the far side of zero: counts cannot go below 1/N_RESAMPLES, too coarse for a correction over
    the dozens of comparisons of one report.
    """
    standard_error = float(np.std(samples))
    if standard_error == 0.0:
        return 1.0 if observed == 0.0 else 0.0
    return math.erfc(abs(observed) / standard_error / math.sqrt(2.0))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given.

    The i-th smallest of m p-values is multiplied by m - i + 1 (the smallest by m), and never
    falls below an adjusted value before it; a hypothesis is rejected at level a when its
    adjusted p-value is below a. Controls the chance of any false claim among the m at a.
    """
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - position) * p_values[index]))
        adjusted[index] = running
    return adjusted


def recall_interval(ranks: np.ndarray, k: int, *, seed: int = 0) -> tuple[float, float]:
    return interval(recall_samples(ranks, k, seed=seed))


@functools.lru_cache(maxsize=16)
def _query_draws(seed: int, n_queries: int, n_resamples: int) -> np.ndarray:
    # Cached: every variant and k on one test set reuses the same draws.
    rng = np.random.default_rng([seed, n_queries])
    draws = rng.integers(0, n_queries, size=(n_resamples, n_queries))
    draws.flags.writeable = False
    return draws
