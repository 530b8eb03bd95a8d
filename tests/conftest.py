"""Shared fixtures: the tiny synthetic city, generated once per test session (once for all
pytest-xdist workers), and one torch thread per worker when several share the cores."""

import os
from pathlib import Path

import pytest
from filelock import FileLock

# Tests that need a service skip without it; CI sets GEOLOC_REQUIRE_<MARK>=1 so that a missing
# service fails the run instead of silently testing less.
REQUIRABLE_MARKS = ("slurm", "browser")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # File names that are not UTF-8 (tests of odd names) reach captured logs as lone surrogates,
    # which pytest-xdist cannot send from a worker: it would crash the worker and end the run.
    report.sections = [(title, text.encode("utf-8", "backslashreplace").decode()) for title, text in report.sections]
    if not report.skipped:
        return
    for mark in REQUIRABLE_MARKS:
        variable = f"GEOLOC_REQUIRE_{mark.upper()}"
        if item.get_closest_marker(mark) and os.environ.get(variable):
            report.outcome = "failed"
            report.longrepr = f"{variable} is set but this {mark} test was skipped: {report.longrepr}"


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder of this session that every pytest-xdist worker sees (each has its own basetemp
    below a common one)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / name


@pytest.fixture(scope="session")
def tiny_city(tmp_path_factory):
    """The `tiny` synthetic city (full real layout), read-only for tests: copy before changing."""
    from geoloc.data.synthetic.write import generate_city

    folder = shared_folder(tmp_path_factory, "city")
    root, done = folder / "data", folder / "done"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / "lock"):  # the first worker builds it, the others wait
        if not done.exists():
            generate_city(root, seed=0, size="tiny")
            done.touch()
    return root


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread_per_worker():
    """With several workers on few cores, torch's OpenMP threads wait on each other's busy cores
    (tests/evaluate/conftest.py: up to 40x slower): each worker keeps to its share."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Files holding slow tests first, the longest first (`@pytest.mark.slow(minutes=10)`; 1 if
    not said): pytest-xdist hands whole files to its workers in this order (make test: --dist
    loadfile), so the long ones start at once and the short ones fill the other worker."""
    minutes: dict = {}
    for item in items:
        slow = item.get_closest_marker("slow")
        minutes[item.path] = max(minutes.get(item.path, 0), slow.kwargs.get("minutes", 1) if slow else 0)
    items.sort(key=lambda item: -minutes[item.path])  # stable: files and tests keep their order


@pytest.fixture(autouse=True)
def _logging_enabled_again():
    """`geoloc.cli.main` silences logging after its error line (the process ends there); a test
    that calls it in-process must not silence the tests after it in the same worker."""
    yield
    import logging

    logging.disable(logging.NOTSET)
