"""Shared fixtures: the tiny synthetic city, generated once per test session."""

import os

import pytest

# Tests that need a service skip without it; CI sets GEOLOC_REQUIRE_<MARK>=1 so that a missing
# service fails the run instead of silently testing less.
REQUIRABLE_MARKS = ("slurm", "browser")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    for mark in REQUIRABLE_MARKS:
        variable = f"GEOLOC_REQUIRE_{mark.upper()}"
        if item.get_closest_marker(mark) and os.environ.get(variable):
            report.outcome = "failed"
            report.longrepr = f"{variable} is set but this {mark} test was skipped: {report.longrepr}"


@pytest.fixture(scope="session")
def tiny_city(tmp_path_factory):
    """The `tiny` synthetic city (full real layout), read-only for tests: copy before changing."""
    from geoloc.data.synthetic.write import generate_city

    root = tmp_path_factory.mktemp("city") / "data"
    generate_city(root, seed=0, size="tiny")
    return root
