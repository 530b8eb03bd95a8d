"""`geoloc report` writes report.html and conclusions.txt together or not at all."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from geoloc.errors import GeolocError
from geoloc.report import render


@pytest.fixture
def quick_report(monkeypatch):
    """`render.run` with the study reading and the page rendering stubbed: only the writing is real."""
    config = {"reference": "r", "evaluation": {"positive_dist_threshold": 25}}
    plan = SimpleNamespace(runs={}, baselines={}, config=config)
    monkeypatch.setattr(render, "read_config", lambda path: ("config", plan))
    monkeypatch.setattr(render, "load_study", lambda *args: "study")
    monkeypatch.setattr(render, "check_against_config", lambda study, plan: None)
    monkeypatch.setattr(render, "paired_tests", lambda study: SimpleNamespace(size=0))
    monkeypatch.setattr(render, "derive_conclusions", lambda study, tests: [])
    monkeypatch.setattr(render, "render_report", lambda study, **kwargs: "<html></html>")


def arguments(tmp_path):
    return SimpleNamespace(
        config=tmp_path / "config.yaml",
        expected=None,
        baselines_dir=None,
        runs_dir=tmp_path,
        recalls=tmp_path / "recalls.csv",
        reference=None,
        positive_dist_threshold=None,
        datasets=None,
        published=None,
        templates=tmp_path,
        out=tmp_path / "report.html",
        conclusions_out=tmp_path / "conclusions.txt",
    )


def test_on_a_full_disk_neither_the_page_nor_the_conclusions_appear(tmp_path, quick_report, monkeypatch):
    real_write_text = Path.write_text

    def full_disk_for_conclusions(path, text, *args, **kwargs):
        if "conclusions" in path.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(path, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk_for_conclusions)
    with pytest.raises(GeolocError, match="No space left on device"):
        render.run(arguments(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_the_page_and_its_conclusions_are_written_together(tmp_path, quick_report):
    render.run(arguments(tmp_path))
    assert (tmp_path / "report.html").read_text() == "<html></html>"
    assert (tmp_path / "conclusions.txt").read_text() == render.NO_CONCLUSION + "\n"
