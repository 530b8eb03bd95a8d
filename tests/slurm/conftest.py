"""The tests here need the SLURM test cluster of start.sh; without it they skip (CI fails them)."""

import pytest

from support.slurm import cluster_problem


# Session scope: checked once, before the session-scoped tiny_city is generated for nothing.
@pytest.fixture(scope="session", autouse=True)
def slurm_cluster():
    problem = cluster_problem()
    if problem:
        pytest.skip(problem)
