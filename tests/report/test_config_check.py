"""`geoloc report --config`: results another config made stop the report with one line, exit 2.

Each test builds a finished results tree (test_render.write_results_tree, made by one config),
then changes the config or one result file the way a user would meet it: a results folder
copied from another config, a setting changed without rerunning, a model retrained after its
evaluation.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from test_render import DEMO_RUNS, REFERENCE, RunSpec, report_args, write_config, write_results_tree

from geoloc.cli import main

RUNS = DEMO_RUNS[:2]  # resnet18 fp32 (the reference) and amp: one baseline, resnet18-imagenet


@pytest.fixture
def tree(tmp_path):
    return write_results_tree(tmp_path, RUNS, test_sets=("sf_xs",), n_queries=6, n_database=8)


def report(tree, tmp_path, capsys) -> tuple[int, list[str], Path]:
    """Run `geoloc report` as the workflow does; its exit code, stderr lines and the page path."""
    out = tmp_path / "report.html"
    conclusions = tmp_path / "conclusions.txt"
    code = main(["report", *report_args(tree, out, "--conclusions-out", str(conclusions))])
    lines = capsys.readouterr().err.splitlines()
    return code, [line for line in lines if "geoloc report: error" in line], out


def edit_config(tree, change) -> None:
    config = yaml.safe_load(tree.config.read_text(encoding="utf-8"))
    change(config)
    tree.config.write_text(yaml.safe_dump(config), encoding="utf-8")


def assert_refused(tree, tmp_path, capsys, *fragments: str) -> str:
    code, errors, out = report(tree, tmp_path, capsys)
    assert code == 2
    assert len(errors) == 1, errors
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not out.exists() and not (tmp_path / "conclusions.txt").exists()
    return errors[0]


def test_results_of_the_config_given_make_a_report(tree, tmp_path, capsys):
    code, errors, out = report(tree, tmp_path, capsys)
    assert (code, errors) == (0, [])
    assert "Backbone study" in out.read_text(encoding="utf-8")


def test_a_changed_training_setting_names_the_run_and_the_key(tree, tmp_path, capsys):
    edit_config(tree, lambda config: config["training"].update(lr=0.01))
    error = assert_refused(tree, tmp_path, capsys, f"run {REFERENCE}: training.lr is 0.01 in ", "but 0.001 in")
    assert "fingerprint.settings.lr" in error and "rerun the workflow" in error


def test_a_block_override_is_named_by_its_block(tree, tmp_path, capsys):
    # The second block (the AMP run) now overrides image_size; its results were trained at 64 px.
    def override(config):
        config["grid"][1].update(training={"image_size": 96}, tag="big")

    edit_config(tree, override)
    # The tag renames the block's run, so the old results are not runs of this grid at all.
    assert_refused(tree, tmp_path, capsys, "run resnet18-imagenet-amp-s0: not a run of the grid in")
    (tree.runs_dir / "resnet18-imagenet-amp-s0").rename(tree.runs_dir / "resnet18-imagenet-amp-s0-big")
    train_json = tree.runs_dir / "resnet18-imagenet-amp-s0-big" / "train.json"
    train = json.loads(train_json.read_text())
    train["run"].update(name="resnet18-imagenet-amp-s0-big", tag="big")
    train_json.write_text(json.dumps(train))
    tree.folders[1] = tree.runs_dir / "resnet18-imagenet-amp-s0-big"
    tree.aggregate()
    assert_refused(tree, tmp_path, capsys, "run resnet18-imagenet-amp-s0-big: grid[1].training.image_size is 96")


def test_settings_only_one_side_has_are_not_compared(tree, tmp_path, capsys):
    # A runtime knob in the config (no fingerprint has it), a fingerprint key the config has not.
    edit_config(tree, lambda config: config["training"].update(num_workers=7, checkpoint_every=3))
    settings = json.loads((tree.runs_dir / REFERENCE / "train.json").read_text())["fingerprint"]["settings"]
    assert "train_images" in settings and "num_workers" not in settings
    assert report(tree, tmp_path, capsys)[:2] == (0, [])


@pytest.mark.parametrize(
    ("key", "value", "run", "fragment"),
    [
        ("k", 10, REFERENCE, "evaluation.k is 10 in"),
        ("resize", [480, 640], REFERENCE, "evaluation.resize is [480, 640] in"),
        # autocast applies to runs trained with amp only: the fp32 reference still matches
        ("autocast", True, RUNS[1].name, "evaluation.autocast is true in"),
    ],
)
def test_a_changed_evaluation_setting_names_the_recall_csv(tree, tmp_path, capsys, key, value, run, fragment):
    edit_config(tree, lambda config: config["evaluation"].update({key: value}))
    assert_refused(tree, tmp_path, capsys, f"run {run}: {fragment}", "in recalls/sf_xs.csv", "another config")


def test_the_positive_threshold_is_checked_in_training_and_in_evaluation(tree, tmp_path, capsys):
    # Validation during training uses it too, so the train.json is the first to differ.
    edit_config(tree, lambda config: config["evaluation"].update(positive_dist_threshold=50))
    assert_refused(
        tree,
        tmp_path,
        capsys,
        f"run {REFERENCE}: evaluation.positive_dist_threshold is 50 in",
        "but 25 in its train.json (fingerprint.settings.positive_dist_threshold)",
    )
    for folder in tree.folders[: len(RUNS)]:
        train = json.loads((folder / "train.json").read_text())
        train["fingerprint"]["settings"]["positive_dist_threshold"] = 50.0
        (folder / "train.json").write_text(json.dumps(train))
    assert_refused(tree, tmp_path, capsys, "evaluation.positive_dist_threshold is 50 in", "but 25 in recalls/sf_xs.csv")


def test_a_resized_evaluation_matches_a_config_that_asks_for_it(tree, tmp_path, capsys):
    edit_config(tree, lambda config: config["evaluation"].update(resize=[480, 640]))
    for folder in tree.folders:
        set_recall_cell(folder / "recalls" / "sf_xs.csv", "resize", "480x640")
    tree.aggregate()
    assert report(tree, tmp_path, capsys)[:2] == (0, [])


def test_evaluation_autocast_matches_the_runs_trained_with_amp_and_nothing_else(tree, tmp_path, capsys):
    # The workflow evaluates only amp-trained runs under autocast; fp32 runs and baselines stay fp32.
    edit_config(tree, lambda config: config["evaluation"].update(autocast=True))
    amp = [folder for folder in tree.folders if folder.name == RUNS[1].name]
    set_recall_cell(amp[0] / "recalls" / "sf_xs.csv", "autocast", "1")
    tree.aggregate()
    code, errors, out = report(tree, tmp_path, capsys)
    assert (code, errors) == (0, [])
    out.unlink()
    (tmp_path / "conclusions.txt").unlink()
    set_recall_cell(tree.folders[0] / "recalls" / "sf_xs.csv", "autocast", "1")  # the fp32 reference
    tree.aggregate()
    assert_refused(tree, tmp_path, capsys, f"run {REFERENCE}: evaluation.autocast is false in")


def test_a_model_retrained_after_its_evaluation_is_refused(tree, tmp_path, capsys):
    train_json = tree.runs_dir / REFERENCE / "train.json"
    train = json.loads(train_json.read_text())
    train["model_sha256"] = "0" * 64
    train_json.write_text(json.dumps(train))
    assert_refused(
        tree, tmp_path, capsys, f"run {REFERENCE}: recalls/sf_xs.csv evaluated a model.pt with sha256", "0" * 64
    )


def test_a_results_folder_from_another_grid_is_refused(tree, tmp_path, capsys):
    # The same folder, reported with the config of a study that has another backbone.
    other = [RunSpec("resnet18", "imagenet", "fp32", 0.5, 1.0), RunSpec("swin_tiny", "imagenet", "amp", 0.5, 1.0)]
    write_config(tree.config, other, reference=REFERENCE)
    assert_refused(tree, tmp_path, capsys, "run resnet18-imagenet-amp-s0: not a run of the grid in")


def test_a_baseline_the_grid_does_not_need_is_refused(tree, tmp_path, capsys):
    write_config(tree.config, [RunSpec("resnet18", "places365", "fp32", 0.5, 1.0)], reference=REFERENCE)
    # The grid's only run has no results yet (a report shows what exists), but the baseline that
    # does is another config's.
    del tree.folders[: len(RUNS)]
    tree.aggregate()
    assert_refused(tree, tmp_path, capsys, "baseline resnet18-imagenet-baseline:", "has no run with its backbone")


def test_a_config_that_is_not_the_workflows_is_a_clear_error(tree, tmp_path, capsys):
    tree.config.write_text("seeds: [0]\n", encoding="utf-8")
    assert_refused(
        tree, tmp_path, capsys, "config.yaml: key grid is missing; pass the workflow's <results>/config.yaml"
    )


def set_recall_cell(path: Path, column: str, value: str) -> None:
    with open(path, newline="", encoding="utf-8") as handle:
        [row] = list(csv.DictReader(handle))
    row[column] = value
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)


def test_a_null_setting_accepts_the_default_the_trainer_resolved(tree, tmp_path, capsys):
    # trainable_blocks: null means the study's choice per backbone; train.json may hold the number.
    edit_config(tree, lambda config: config["training"].update(trainable_blocks=None))
    for folder in tree.folders[: len(RUNS)]:
        train = json.loads((folder / "train.json").read_text())
        train["fingerprint"]["settings"]["trainable_blocks"] = 2
        (folder / "train.json").write_text(json.dumps(train))
    code, errors, out = report(tree, tmp_path, capsys)
    assert (code, errors) == (0, [])
    out.unlink()
    (tmp_path / "conclusions.txt").unlink()
    edit_config(tree, lambda config: config["training"].update(trainable_blocks=3))
    assert_refused(tree, tmp_path, capsys, "training.trainable_blocks is 3 in", "but 2 in its train.json")


def test_a_test_sets_own_threshold_from_datasets_json_is_the_one_checked(tree, tmp_path, capsys):
    datasets = tmp_path / "datasets.json"
    entry = {
        "label": "SF-XS",
        "positive_dist_threshold": 50.0,
        "subset_of": None,
        "source": "",
        "database": 8,
        "queries": 6,
        "queries_file": None,
    }
    datasets.write_text(json.dumps({"root": "", "images": {}, "test_sets": {"sf_xs": entry}, "training": {}}))
    out = tmp_path / "report.html"
    code = main(["report", *report_args(tree, out, "--datasets", str(datasets))])
    errors = [line for line in capsys.readouterr().err.splitlines() if "geoloc report: error" in line]
    assert code == 2 and len(errors) == 1
    assert "test set sf_xs's positive_dist_threshold is 50 in datasets.json but 25 in recalls/sf_xs.csv" in errors[0]
    entry["positive_dist_threshold"] = 25.0
    datasets.write_text(json.dumps({"root": "", "images": {}, "test_sets": {"sf_xs": entry}, "training": {}}))
    assert main(["report", *report_args(tree, out, "--datasets", str(datasets))]) == 0
