"""Stamps plan exactly the jobs whose settings or data changed, whatever Snakemake's metadata says
(geoloc.provenance.stamps)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from geoloc.provenance import stamps
from geoloc.provenance.stamps import FIRST_TIME, expected, write_stamp


@pytest.fixture(autouse=True)
def fresh_fingerprints():
    # One parse of the workflow is one process; each test here is one parse.
    stamps.folder_fingerprint.cache_clear()
    stamps.file_fingerprint.cache_clear()


def make_images(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"jpeg " + name.encode())


def test_a_stamp_is_rewritten_only_when_its_content_changes(tmp_path):
    path = tmp_path / "stamps" / "train" / "run.json"
    assert write_stamp(path, {"settings": "--lr 1e-05"})
    assert os.stat(path).st_mtime == FIRST_TIME  # a new stamp records; it does not rerun
    os.utime(path, (1000, 1000))
    assert not write_stamp(path, {"settings": "--lr 1e-05"})
    assert os.stat(path).st_mtime == 1000
    assert write_stamp(path, {"settings": "--lr 3e-05"})
    assert os.stat(path).st_mtime > 1000


def test_a_dataset_changed_in_place_changes_the_stamp_and_a_moved_one_does_not(tmp_path):
    data = tmp_path / "data"
    make_images(data / "queries", "@1@2@.jpg", "@3@4@.jpg")
    before = expected("--k 20", {"test": data})
    assert before["folders"]["test"]["images"] == 2
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    data.rename(moved)
    assert expected("--k 20", {"test": moved}) == before
    stamps.folder_fingerprint.cache_clear()
    (moved / "queries" / "@1@2@.jpg").write_bytes(b"another jpeg")  # rewritten in place
    assert expected("--k 20", {"test": moved}) != before


def test_a_file_a_job_reads_counts_by_content(tmp_path):
    (tmp_path / "queries.txt").write_text("a.jpg\n")
    first = expected("s", files={"queries": tmp_path / "queries.txt"})
    stamps.file_fingerprint.cache_clear()
    (tmp_path / "queries.txt").write_text("b.jpg\n")
    assert expected("s", files={"queries": tmp_path / "queries.txt"}) != first


SNAKEFILE = textwrap.dedent("""
    from geoloc.provenance import stamps

    stamps.write_stamps("stamps", {
        f"job/{name}": stamps.expected(config["settings"][name], {"data": "data"}) for name in ("a", "b")
    })

    rule all:
        input: expand("out/{name}.txt", name=("a", "b"))

    rule job:
        input: stamp="stamps/job/{name}.json"
        output: "out/{name}.txt"
        shell: "cp {input.stamp} {output}; echo {wildcards.name} >> ran.log"
""")


def snakemake(folder, settings: dict[str, str]) -> list[str]:
    """Run the workflow in `folder` with only mtime triggers and no metadata; the jobs that ran."""
    shutil.rmtree(folder / ".snakemake", ignore_errors=True)
    (folder / "ran.log").unlink(missing_ok=True)
    config = [f"settings={settings}".replace(" ", "")]
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-c1", "--rerun-triggers", "mtime", "--config", *config],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    log = folder / "ran.log"
    return sorted(log.read_text().split()) if log.exists() else []


def test_only_the_jobs_whose_stamp_changed_rerun_without_snakemake_metadata(tmp_path):
    folder = tmp_path / "study"
    make_images(folder / "data", "@1@2@.jpg")
    (folder / "Snakefile").write_text(SNAKEFILE)
    assert snakemake(folder, {"a": "x", "b": "y"}) == ["a", "b"]
    assert snakemake(folder, {"a": "x", "b": "y"}) == []
    assert snakemake(folder, {"a": "x", "b": "z"}) == ["b"]  # a setting of b changed
    make_images(folder / "data", "@5@6@.jpg")  # one image more, in place
    assert snakemake(folder, {"a": "x", "b": "z"}) == ["a", "b"]
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)  # a fresh copy elsewhere, times kept
    assert snakemake(moved, {"a": "x", "b": "z"}) == []
