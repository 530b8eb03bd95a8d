"""Bootstrap confidence intervals of recall@k from per-query ranks."""

from __future__ import annotations

import numpy as np
import pytest

from geoloc.report.bootstrap import recall_interval, recall_samples


def test_all_correct_gives_a_degenerate_interval_at_100():
    assert recall_interval(np.ones(50, dtype=int), 1) == (100.0, 100.0)


def test_no_correct_match_in_top_k_gives_zero():
    assert recall_interval(np.zeros(50, dtype=int), 20) == (0.0, 0.0)


def test_a_match_below_k_counts_only_from_its_rank_on():
    ranks = np.full(40, 10)
    assert recall_interval(ranks, 5) == (0.0, 0.0)
    assert recall_interval(ranks, 10) == (100.0, 100.0)


def test_half_correct_interval_matches_the_binomial_width():
    # 100 queries at 50%: standard error 5 points, so the 95% interval is about 40..60.
    ranks = np.array([1, 0] * 50)
    low, high = recall_interval(ranks, 1)
    assert 39.0 <= low <= 41.0 and 59.0 <= high <= 61.0
    assert np.mean(recall_samples(ranks, 1)) == pytest.approx(50.0, abs=0.5)


def test_few_queries_give_wide_intervals():
    # Tokyo-Night's 105 queries vs SF-XS's 1000 at the same recall: about sqrt(10) times wider.
    def width(n_queries):
        ranks = (np.arange(n_queries) % 2 == 0).astype(int)
        low, high = recall_interval(ranks, 1)
        return high - low

    assert 17.0 < width(105) < 21.0
    assert 5.5 < width(1000) < 7.0


def test_same_ranks_give_the_same_interval_every_time():
    ranks = np.random.default_rng(3).integers(0, 21, size=300)
    assert recall_interval(ranks, 5) == recall_interval(ranks.copy(), 5)


def test_seeds_that_disagree_widen_the_interval():
    # One seed finds every query, the other none: resampling seeds spans 0..100.
    ranks = np.stack([np.ones(60, dtype=int), np.zeros(60, dtype=int)])
    assert recall_interval(ranks, 1) == (0.0, 100.0)
    assert np.mean(recall_samples(ranks, 1)) == pytest.approx(50.0, abs=2.0)
