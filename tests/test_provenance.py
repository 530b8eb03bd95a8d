"""What results record about what made them, and the checks that compare it (geoloc.provenance)."""

from __future__ import annotations

import hashlib
import json

import pytest

from geoloc import cli
from geoloc.errors import GeolocError
from geoloc.provenance import checked_model


def write_run(folder, model: bytes, recorded: bytes) -> None:
    folder.mkdir()
    (folder / "model.pt").write_bytes(model)
    summary = {"model_sha256": hashlib.sha256(recorded).hexdigest()}
    (folder / "train.json").write_text(json.dumps(summary), encoding="utf-8")


def test_the_model_train_json_records_passes_with_its_digest(tmp_path):
    write_run(tmp_path / "run", b"weights", b"weights")
    assert checked_model(tmp_path / "run" / "model.pt") == hashlib.sha256(b"weights").hexdigest()


def test_a_model_with_flipped_bytes_is_refused_naming_both_files_to_delete(tmp_path):
    write_run(tmp_path / "run", b"weightz", b"weights")
    with pytest.raises(
        GeolocError,
        match=r"run/model.pt: its sha256 .* is not the model_sha256 .* that "
        r".*run/train.json records .*: delete .*run/model.pt and "
        r".*run/train.json and rerun the workflow",
    ):
        checked_model(tmp_path / "run" / "model.pt")


def test_a_model_without_train_json_beside_it_has_nothing_to_compare(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    assert checked_model(tmp_path / "model.pt") == hashlib.sha256(b"weights").hexdigest()


def test_geoloc_evaluate_refuses_a_model_that_changed_after_training_in_one_line(tiny_city, tmp_path, capsys):
    write_run(tmp_path / "run", b"not the trained model", b"the trained model")
    code = cli.main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "run" / "model.pt"),
            "--test-set",
            f"tokyo_xs={tiny_city / 'tokyo_xs' / 'test'}",
            "--out-dir",
            str(tmp_path / "run" / "recalls"),
        ]
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == cli.EXIT_BAD_INPUT
    assert last.startswith(f"geoloc evaluate: error: {tmp_path / 'run' / 'model.pt'}: its sha256 ")
    assert last.endswith("and rerun the workflow (it retrains the run)")
    assert not (tmp_path / "run" / "recalls").exists()
