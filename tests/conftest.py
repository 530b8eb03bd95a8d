"""Shared fixtures: the tiny synthetic city, generated once per test session."""

import pytest


@pytest.fixture(scope="session")
def tiny_city(tmp_path_factory):
    """The `tiny` synthetic city (full real layout), read-only for tests: copy before changing."""
    from geoloc.synthetic import generate_city

    root = tmp_path_factory.mktemp("city") / "data"
    generate_city(root, seed=0, size="tiny")
    return root
