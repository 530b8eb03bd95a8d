"""`geoloc report` on a hand-made results tree: sections, tables, escaping, self-containment.

`write_results_tree` builds what the workflow would leave behind (run folders with train.json,
recall CSVs, per-query CSVs, tiny test-set JPEGs, a config) following the file contracts;
the browser test reuses it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import re
import subprocess
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from test_aggregate import baseline_summary

from geoloc.data.names import format_image_name
from geoloc.errors import GeolocError
from geoloc.evaluate.result_files import QUERY_COLUMNS, RECALL_COLUMNS
from geoloc.report import aggregate
from geoloc.report import render as report
from geoloc.report.aggregate import write_recalls
from geoloc.report.gallery import pick_queries
from geoloc.report.render import find_project_path
from geoloc.report.sections import git_commit

XSS = "<script>alert(1)</script>"
XSS_TAG = "<img src=x onerror=alert(1)>"  # no '/', so it can be part of a run folder name
# Every character a file name may hold that could break a CSV cell, a list or the page (C13).
HOSTILE_NOTE = "a|b,\"c\" 'd'\ne\u00e9\u6771<script>"
REFERENCE = "resnet18-imagenet-fp32-s0"
PUBLISHED = Path(__file__).resolve().parents[2] / "resources" / "published-results.csv"
SECTIONS = ["conclusions", "recalls", "cost", "plots", "retrievals", "uncertainty", "published", "provenance"]


@dataclass(frozen=True)
class RunSpec:
    backbone: str
    pretraining: str
    precision: str
    recall: float  # share of queries found at rank 1
    seconds: float  # training time
    seed: int = 0
    tag: str = ""
    device: str = "cpu"
    settings: tuple[tuple[str, object], ...] = ()  # the block's training overrides (needs a tag)

    @property
    def name(self) -> str:
        return "-".join(
            [self.backbone, self.pretraining, self.precision, f"s{self.seed}"] + ([self.tag] if self.tag else [])
        )


DEMO_RUNS = (
    RunSpec("resnet18", "imagenet", "fp32", 0.45, 400.0),
    RunSpec("resnet18", "imagenet", "amp", 0.45, 260.0),
    RunSpec("efficientnet_v2_s", "imagenet", "amp", 0.90, 520.0),
    RunSpec("mobilenet_v3_small", "imagenet", "amp", 0.25, 180.0, tag=XSS_TAG),
)


# The config's training and evaluation sections; train.json fingerprints what they say (C4).
TRAINING = {"epochs": 3, "iterations_per_epoch": 20, "batch_size": 8, "image_size": 64, "lr": 1.0e-3, "num_workers": 0}
EVALUATION = {
    "batch_size": 16,
    "num_workers": 0,
    "k": 20,
    "positive_dist_threshold": 25,
    "resize": None,
    "autocast": False,
}
BASELINE_RECALL = 0.1  # share of queries the untrained network finds at rank 1


@dataclass(frozen=True)
class ResultsTree:
    recalls_csv: Path
    runs_dir: Path
    config: Path
    folders: list[Path]  # every run and baseline folder, as the workflow passes them to aggregate

    def aggregate(self) -> None:
        run_command(aggregate, ["--out", str(self.recalls_csv), *map(str, self.folders)])


def write_results_tree(
    root: Path,
    runs: tuple[RunSpec, ...] = DEMO_RUNS,
    *,
    test_sets: tuple[str, ...] = ("sf_xs", "tokyo_night"),
    n_queries: int = 12,
    n_database: int = 16,
    reported_sizes: tuple[int, int] | None = None,
    missing: tuple[str, ...] = (),
    baselines: bool = True,
) -> ResultsTree:
    """Write test sets, run (and baseline) folders and their config under `root`, then aggregate.

    `missing` runs are in the config's grid but have no folder.
    """
    runs_dir = root / "results" / "runs"
    baselines_dir = root / "results" / "baselines"
    pairs = list(dict.fromkeys((spec.backbone, spec.pretraining) for spec in runs)) if baselines else []
    for index, test_set in enumerate(test_sets):
        test_dir = root / "data" / test_set / "test"
        database = [
            _write_jpeg(test_dir / "database", 1000 + 30 * j, 5000, (40 * index, 9 * j, 120)) for j in range(n_database)
        ]
        queries = [
            _write_jpeg(test_dir / "queries", 1000 + 30 * i, 5001, (200, 15 * i, 40 * index)) for i in range(n_queries)
        ]
        # One draw per query shared by all runs, so a better run finds a superset of the queries.
        difficulty = np.random.default_rng(index).random(n_queries)
        for spec in runs:
            ranks = np.where(difficulty < spec.recall, 1, np.where(difficulty < spec.recall + 0.3, 3, 0))
            _write_recalls(
                runs_dir / spec.name, test_set, test_dir, ranks, queries, database, reported_sizes, _model_sha256(spec)
            )
        for backbone, pretraining in pairs:
            ranks = np.where(difficulty < BASELINE_RECALL, 1, 0)
            folder = baselines_dir / f"{backbone}-{pretraining}"
            _write_recalls(folder, test_set, test_dir, ranks, queries, database, reported_sizes, "", "baseline")
    for spec in runs:
        _write_train_json(runs_dir / spec.name, spec)
    for backbone, pretraining in pairs:
        _write_baseline_json(baselines_dir / f"{backbone}-{pretraining}", backbone, pretraining)
    config = root / "results" / "config.yaml"
    write_config(config, list(runs) + [_spec_of(name) for name in missing])
    folders = [runs_dir / s.name for s in runs] + [baselines_dir / f"{b}-{p}" for b, p in pairs]
    tree = ResultsTree(root / "results" / "recalls.csv", runs_dir, config, folders)
    tree.aggregate()
    if reported_sizes:  # as if evaluated on the full-size set: the per-query files are its first queries
        table = pd.read_csv(tree.recalls_csv, dtype=str, keep_default_na=False)
        table["n_queries"], table["n_database"] = map(str, reported_sizes)
        table.to_csv(tree.recalls_csv, index=False)
    return tree


def write_config(path: Path, runs: list[RunSpec], **changes) -> None:
    """The effective config of a grid with one block per run (`changes` replace top-level keys)."""
    grid = [
        {
            "backbones": [spec.backbone],
            "pretrainings": [spec.pretraining],
            "precisions": [spec.precision],
            "seeds": [spec.seed],
            **({"tag": spec.tag} if spec.tag else {}),
            **({"training": dict(spec.settings)} if spec.settings else {}),
        }
        for spec in runs
    ]
    config = {"reference": REFERENCE, "training": TRAINING, "evaluation": EVALUATION, "grid": grid, **changes}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"note: '{XSS}'\n" + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _spec_of(name: str) -> RunSpec:
    backbone, pretraining, precision, seed = name.split("-")[:4]
    return RunSpec(backbone, pretraining, precision, 0.0, 0.0, seed=int(seed[1:]))


def _model_sha256(spec: RunSpec) -> str:
    return hashlib.sha256(spec.name.encode()).hexdigest()


def run_command(module, argv: list[str]) -> None:
    """Parse `argv` with the command's own arguments and run it (as `geoloc COMMAND` would)."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    module.run(parser.parse_args(argv))


def report_args(tree: ResultsTree, out: Path, *extra: str) -> list[str]:
    """`geoloc report` as the workflow runs it (reference and grid from the config)."""
    return ["--recalls", str(tree.recalls_csv), "--runs-dir", str(tree.runs_dir), "--config", str(tree.config)] + [
        "--out",
        str(out),
        *extra,
    ]


def render(tree: ResultsTree, out: Path, *extra: str) -> str:
    run_command(report, report_args(tree, out, *extra))
    return out.read_text(encoding="utf-8")


def _write_jpeg(folder: Path, east: float, north: float, color: tuple[int, int, int]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    name = format_image_name(east, north, 0.0, note=HOSTILE_NOTE)
    pixels = np.full((120, 160, 3), color, dtype=np.uint8)  # larger than a thumbnail
    pixels[::8] = 255  # stripes, so thumbnails are not flat colour
    Image.fromarray(pixels).save(folder / name, quality=90)
    return f"{folder.name}/{name}"


def _write_recalls(run_dir, test_set, test_dir, ranks, queries, database, reported_sizes, model_sha256, kind="trained"):
    recalls = run_dir / "recalls"
    recalls.mkdir(parents=True, exist_ok=True)
    n_queries, n_database = len(queries), len(database)
    r = {k: 100.0 * np.mean((ranks >= 1) & (ranks <= k)) for k in (1, 5, 10, 20)}
    with open(recalls / f"{test_set}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(RECALL_COLUMNS)
        writer.writerow(
            [test_set, n_queries, n_database, 0, r[1], r[5], r[10], r[20], 1.5, 0.01, 2.5, test_dir]
            + [model_sha256, 20, 25.0, "", 0, "cpu", kind]
        )
    with open(recalls / f"{test_set}.queries.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(QUERY_COLUMNS)
        for i, (query, rank) in enumerate(zip(queries, ranks)):
            top = [database[(i + j) % len(database)] for j in range(10)]
            distances = [8.0 if j + 1 == rank else 140.0 + 10 * j for j in range(10)]
            writer.writerow([query, rank, 1, json.dumps(top), json.dumps(distances)])


def _write_train_json(run_dir: Path, spec: RunSpec) -> None:
    epochs = [
        {
            "epoch": e,
            "group": 0,
            "loss": 10.0 - e,
            "iterations": 20,
            "train_seconds": spec.seconds * 0.3,
            "val_seconds": spec.seconds * 0.033,
            "images_per_second": 42.0,
            "val_recalls": {"r1": 100 * spec.recall * (0.6 + 0.2 * e), "r5": 80.0, "r10": 85.0, "r20": 90.0},
        }
        for e in range(3)
    ]
    settings = {
        **{key: value for key, value in TRAINING.items() if key != "num_workers"},  # a runtime knob
        "backbone": spec.backbone,
        "precision": spec.precision,
        "seed": spec.seed,
        "positive_dist_threshold": 25.0,
        "weights_format": None,
        "weights_sha256": None,
        "train_images": "ab" * 32,
        **dict(spec.settings),
    }
    train = {
        "run": {
            "name": spec.name,
            "backbone": spec.backbone,
            "pretraining": spec.pretraining,
            "precision": spec.precision,
            "seed": spec.seed,
            "tag": spec.tag or None,
            "kind": "trained",
        },
        "hyperparameters": {
            **TRAINING,
            "loss": "cosface",
            "backbone": spec.backbone,
            "precision": spec.precision,
            "fc_output_dim": 512,
            **dict(spec.settings),
        },
        "fingerprint": {
            "sha256": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
            "settings": settings,
        },
        "model_sha256": _model_sha256(spec),
        "image_cache_build_seconds": 30.0,
        "compile_seconds": None,
        "device_type": "cpu" if spec.device == "cpu" else "cuda",
        "gpus": 0 if spec.device == "cpu" else 1,
        "world_size": 1,
        "weights": None,
        "epochs": epochs,
        "best_epoch": 2,
        "best_val_r1": epochs[-1]["val_recalls"]["r1"],
        "train_seconds": spec.seconds * 0.9,
        "val_seconds": spec.seconds * 0.1,
        "training_time_seconds": spec.seconds,
        "images_per_second": 42.0,
        "peak_memory_mb": 812.0,
        "device": spec.device,
        "params": 11_200_000,
        "trainable_params": 8_400_000,
        "resumed_from_iteration": None,
        "versions": {"python": "3.11.2", "torch": "2.14.1", "geoloc": "0.1.0"},
        "started_at": "2025-01-02T10:00:00+00:00",
        "finished_at": "2025-01-02T10:09:00+00:00",
    }
    (run_dir / "train.json").write_text(json.dumps(train), encoding="utf-8")


def _write_baseline_json(folder: Path, backbone: str, pretraining: str) -> None:
    summary = baseline_summary(backbone, pretraining, device="cpu")
    (folder / "baseline.json").write_text(json.dumps(summary), encoding="utf-8")


class Outline(HTMLParser):
    """Section ids in order, tables per section, and every src/href value."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.tables: dict[str, int] = {}
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(attributes["id"])
        if tag == "table":
            self.tables[self.sections[-1]] = self.tables.get(self.sections[-1], 0) + 1
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def outline(html: str) -> Outline:
    parser = Outline()
    parser.feed(html)
    return parser


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("demo")
    tree = write_results_tree(root, missing=("convnext_tiny-imagenet-amp-s0",))
    return render(tree, root / "results" / "report.html", "--published", str(PUBLISHED))


def test_sections_come_in_the_issue_order_with_their_tables(demo_report):
    page = outline(demo_report)
    assert page.sections == SECTIONS
    # one table per test set in recalls and uncertainty; one per gallery query (the better run finds
    # a superset of the reference's queries: 2 it alone finds + 1 shared success + 1 shared failure);
    # provenance: runs and package versions (no run started from pretrained weights)
    assert page.tables == {"recalls": 2, "cost": 1, "retrievals": 8, "uncertainty": 2, "provenance": 2}
    # recall vs training time, recall vs memory, recall@k, validation curves
    assert demo_report.count("<svg") == 4


def test_conclusions_name_the_clear_winner_and_no_amp_recall_effect(demo_report):
    assert "EfficientNetV2-S (ImageNet, AMP) is the best backbone overall" in demo_report
    # FP32 and AMP of the same backbone and budget, on one CPU: training times compared.
    assert (
        "<strong>Precision AMP vs FP32.</strong> With all other factors equal, overall (mean R@1 over SF-XS, "
        "Tokyo-Night): ResNet-18: +0.0 points, 95% CI +0.0 to +0.0, adjusted p 1.000, not significant, with 35% less "
        "training time (4 min vs 7 min)."
    ) in demo_report
    # The MobileNet is quicker, but did not learn: it is no candidate for "fastest".
    assert "ResNet-18 (ImageNet, AMP) trains fastest among runs of 60 iterations of 8 images on cpu (4 min)." in (
        demo_report
    )
    did_not_learn = demo_report.split("<strong>Did not learn.</strong>")[1].split("</li>")[0]
    assert "MobileNetV3-Small (ImageNet, AMP, &lt;img src=x onerror=alert(1)&gt;) (+4.2 points" in did_not_learn


def test_recall_table_marks_best_and_shows_delta_to_reference(demo_report):
    sf_table = demo_report.split("<caption>SF-XS: 12 queries, 16 database images, correct within 25 m</caption>")[
        1
    ].split("</table>")[0]
    efficientnet_row = sf_table.split("EfficientNetV2-S (ImageNet, AMP)")[1].split("</tr>")[0]
    # 10 of 12 found at 1 vs the reference's 4 of 12: +50.0 points, and the best of the column.
    assert '<strong title="best">83.3</strong> <span class="delta">(+50.0)</span>' in efficientnet_row
    reference_row = sf_table.split("ResNet-18 (ImageNet, FP32)")[1].split("</tr>")[0]
    assert "<td>33.3</td>" in reference_row and "delta" not in reference_row


def test_conclusions_preamble_says_how_claims_and_the_overall_score_are_made(demo_report):
    preamble = demo_report.split('<section id="conclusions">')[1].split("</p>")[0]
    tested = int(re.search(r"This report tests (\d+) difference\(s\)", preamble).group(1))
    assert tested > 10 and "Holm-Bonferroni" in preamble and "adjusted p-value is below 0.05" in preamble
    # Tokyo-XS is not in this study, so Tokyo-Night's queries are counted once already.
    assert "The overall score is the mean of R@1 on SF-XS and Tokyo-Night, each test set weighted equally." in preamble


def test_conclusions_out_is_the_conclusions_one_per_line(tmp_path):
    tree = write_results_tree(tmp_path, DEMO_RUNS)
    text_file = tmp_path / "conclusions.txt"
    html = render(tree, tmp_path / "report.html", "--conclusions-out", str(text_file))
    lines = text_file.read_text(encoding="utf-8").splitlines()
    items = re.findall(r'<li class="(?:claim|plain)"><strong>(.*?)</strong> (.*?)</li>', html, flags=re.DOTALL)
    assert len(lines) == len(items) > 5
    topic, text = map(unescape, items[0])
    assert lines[0] == f"{topic} {text}" and lines[0].startswith("Gain over the untrained baseline on SF-XS. Training")
    # Plain text: names as they are, not HTML-escaped.
    assert any(f"MobileNetV3-Small (ImageNet, AMP, {XSS_TAG})" in line for line in lines)


def test_without_conclusions_the_text_file_says_so(tmp_path):
    write_recalls(tmp_path / "recalls.csv", [])
    write_config(tmp_path / "config.yaml", [DEMO_RUNS[0]])
    tree = ResultsTree(tmp_path / "recalls.csv", tmp_path / "runs", tmp_path / "config.yaml", [])
    render(tree, tmp_path / "report.html", "--conclusions-out", str(tmp_path / "conclusions.txt"))
    first = (tmp_path / "conclusions.txt").read_text().splitlines()[0]
    assert (
        first == f"Data. 2 expected run(s) have no results and are left out: {REFERENCE}, resnet18-imagenet-baseline."
    )


def test_baselines_sit_beside_their_trained_runs_in_tables_and_plots(demo_report):
    sf_table = demo_report.split("<caption>SF-XS: 12 queries, 16 database images, correct within 25 m</caption>")[
        1
    ].split("</table>")[0]
    labels = [label.strip() for label in re.findall(r'<th scope="row">([^<]*)<', sf_table)]
    assert labels == [
        "ResNet-18 (ImageNet, untrained)",
        "ResNet-18 (ImageNet, FP32)",
        "ResNet-18 (ImageNet, AMP)",
        "EfficientNetV2-S (ImageNet, untrained)",
        "EfficientNetV2-S (ImageNet, AMP)",
        "MobileNetV3-Small (ImageNet, untrained)",
        f"MobileNetV3-Small (ImageNet, AMP, {XSS_TAG.replace('<', '&lt;').replace('>', '&gt;')})",
    ]
    baseline_row = sf_table.split("ResNet-18 (ImageNet, untrained)")[1].split("</tr>")[0]
    # 3 of 12 found untrained: 25.0, 8.3 points below the reference; never marked best.
    assert '<td>25.0 <span class="delta">(\u22128.3)</span></td>' in baseline_row and "best" not in baseline_row
    plots = demo_report.split('<section id="plots">')[1].split("</section>")[0]
    # legends of recall vs time, recall vs memory and recall@k
    assert plots.count("EfficientNetV2-S (ImageNet, untrained)") == 3


def test_uncertainty_says_one_seed_covers_only_the_queries(demo_report):
    uncertainty = demo_report.split('<section id="uncertainty">')[1].split("</section>")[0]
    assert "Every configuration was trained once (one seed), so the intervals cover the choice of test queries" in (
        " ".join(uncertainty.split())
    )
    assert "<code>seeds: [0, 1, 2]</code>" in uncertainty


def test_provenance_records_each_runs_gpus_and_image_cache_build(demo_report):
    provenance = demo_report.split('<section id="provenance">')[1]
    row = provenance.split(f"<code>{REFERENCE}</code>")[1].split("</tr>")[0]
    # device, GPUs, processes, training time, image cache build, torch.compile
    assert re.findall(r"<td>([^<]*)</td>", row)[:6] == ["cpu", "0", "1", "7 min", "30 s", "n/a"]


def test_runs_on_other_hardware_get_no_pareto_front(tmp_path):
    runs = (DEMO_RUNS[0], RunSpec("efficientnet_v2_s", "imagenet", "amp", 0.9, 520.0, device="NVIDIA H200"))
    html = render(write_results_tree(tmp_path, runs, test_sets=("sf_xs",)), tmp_path / "report.html")
    plots = html.split('<section id="plots">')[1].split("</section>")[0]
    assert "The runs trained on different hardware (cpu: ResNet-18 (ImageNet, FP32); 1 \u00d7 NVIDIA H200:" in plots
    assert "Pareto front" not in plots.split("<svg")[1].split("</svg>")[0]  # not in the figure's legend
    assert "trains fastest" not in html


def test_prediction_cells_that_are_not_json_arrays_are_a_clear_error(tmp_path):
    tree = write_results_tree(tmp_path, DEMO_RUNS[:2], test_sets=("sf_xs",))
    path = tree.runs_dir / REFERENCE / "recalls" / "sf_xs.queries.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table["predictions"] = table["predictions"].map(lambda cell: "|".join(json.loads(cell)))  # the old format
    table.to_csv(path, index=False)
    with pytest.raises(GeolocError, match=r"sf_xs.queries.csv: query .*: column predictions is not a JSON array"):
        render(tree, tmp_path / "report.html")


def test_values_from_the_data_are_escaped(demo_report):
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in demo_report  # config note
    assert "&lt;img src=x onerror=alert(1)&gt;" in demo_report  # run tag
    assert "<script" not in demo_report.lower()
    assert "<img src=x" not in demo_report


def test_missing_expected_run_is_listed_with_how_to_rerun(demo_report):
    provenance = demo_report.split('<section id="provenance">')[1]
    assert "<code>convnext_tiny-imagenet-amp-s0</code>: no results" in provenance
    assert "--keep-going" in provenance


def test_page_is_self_contained_and_small(demo_report):
    page = outline(demo_report)
    assert all(link.startswith(("data:image/jpeg;base64,", "#")) for link in page.links)
    assert "@import" not in demo_report
    assert all(target.startswith("#") for target in re.findall(r"url\(([^)]*)\)", demo_report))
    assert len(demo_report.encode()) < 5_000_000
    thumbnail = next(link for link in page.links if link.startswith("data:"))
    with Image.open(io.BytesIO(base64.b64decode(thumbnail.split(",", 1)[1]))) as image:
        assert image.format == "JPEG" and image.size == (96, 72)


def test_gallery_pairs_reference_with_best_and_marks_hits(demo_report):
    retrievals = demo_report.split('<section id="retrievals">')[1].split("</section>")[0]
    assert "<h3>SF-XS: ResNet-18 (ImageNet, FP32) vs EfficientNetV2-S (ImageNet, AMP)</h3>" in retrievals
    assert "only EfficientNetV2-S (ImageNet, AMP) is right at R@1" in retrievals
    assert "✓ 8 m" in retrievals and "✗ 140 m" in retrievals
    # Every image name holds '|', ',', quotes, a newline, non-ASCII and '<script>' (JSON arrays in
    # the per-query CSV, C13): each thumbnail is still found, each name shown as text.
    assert "image missing" not in retrievals and retrievals.count('src="data:image/jpeg') == 8 * 11
    assert "a|b,&#34;c&#34; &#39;d&#39;\ne\u00e9\u6771&lt;script&gt;" in retrievals


def test_uncertainty_shows_interval_width_per_test_set(demo_report):
    uncertainty = demo_report.split('<section id="uncertainty">')[1].split("</section>")[0]
    widths = re.findall(r"(SF-XS|Tokyo-Night): 12 queries, R@1 intervals\s+([\d.]+) points wide", uncertainty)
    assert [name for name, _ in widths] == ["SF-XS", "Tokyo-Night"]
    assert all(20.0 < float(width) < 60.0 for _, width in widths)  # 12 queries: very wide


def test_synthetic_test_sets_are_not_compared_with_published_numbers(demo_report):
    published = demo_report.split('<section id="published">')[1].split("</section>")[0]
    assert "None of these test sets is one the study published" in published


def test_real_test_sets_are_compared_with_published_numbers(tmp_path):
    runs = (RunSpec("resnet18", "imagenet", "fp32", 0.5, 4 * 3600.0),)
    tree = write_results_tree(tmp_path, runs, test_sets=("sf_xs",), n_queries=20, reported_sizes=(1000, 27191))
    html = render(tree, tmp_path / "report.html", "--published", str(PUBLISHED))
    published = html.split('<section id="published">')[1].split("</section>")[0]
    row = published.split("ResNet-18 (ImageNet, FP32)")[1].split("</tr>")[0]
    cells = re.findall(r"<td>([^<]*)</td>", row)
    ours = pd.read_csv(tree.recalls_csv)["r1"].iloc[0]  # 8 of the 20 queries
    assert cells[:3] == [f"{ours:.1f}", "52.2", "\u2212" + f"{52.2 - ours:.1f}"] == ["40.0", "52.2", "\u221212.2"]
    assert cells[-2:] == ["4.00", "4.00"]  # training hours: ours, the study's


def test_report_renders_when_only_the_reference_has_results(tmp_path):
    tree = write_results_tree(tmp_path, DEMO_RUNS[:1], test_sets=("tokyo_night",), missing=(DEMO_RUNS[2].name,))
    html = render(tree, tmp_path / "report.html")
    assert outline(html).sections == SECTIONS
    assert "Only one configuration has results" in html
    assert "is the best" not in html


def test_without_published_results_the_section_says_so(tmp_path):
    tree = write_results_tree(tmp_path, DEMO_RUNS[:1], test_sets=("sf_xs",), reported_sizes=(1000, 27191))
    published = render(tree, tmp_path / "report.html").split('<section id="published">')[1]
    assert "No published results were given" in published.split("</section>")[0]


def test_report_renders_when_no_run_has_results(tmp_path):
    write_recalls(tmp_path / "recalls.csv", [])
    write_config(tmp_path / "config.yaml", [DEMO_RUNS[0]])
    tree = ResultsTree(tmp_path / "recalls.csv", tmp_path / "runs", tmp_path / "config.yaml", [])
    html = render(tree, tmp_path / "report.html")
    assert outline(html).sections == SECTIONS
    assert "No run has results yet." in html
    assert f"The reference run {REFERENCE} has no results" in html


def test_run_missing_a_test_set_is_listed_and_seeds_are_pooled(tmp_path):
    runs = (
        RunSpec("resnet18", "imagenet", "fp32", 0.3, 400.0),
        RunSpec("resnet18", "imagenet", "fp32", 0.6, 420.0, seed=1),
        RunSpec("swin_tiny", "imagenet", "fp32", 0.5, 900.0),
    )
    tree = write_results_tree(tmp_path, runs, test_sets=("sf_xs", "tokyo_night"))
    for name in ("tokyo_night.csv", "tokyo_night.queries.csv"):  # never evaluated there (a lone deleted CSV is refused)
        (tree.runs_dir / "swin_tiny-imagenet-fp32-s0" / "recalls" / name).unlink()
    tree.aggregate()
    html = render(tree, tmp_path / "report.html")
    assert "<code>swin_tiny-imagenet-fp32-s0</code>: no results on Tokyo-Night" in html
    assert "Swin-Tiny (ImageNet, FP32) was trained once (one seed)" in " ".join(html.split())
    uncertainty = html.split('<section id="uncertainty">')[1].split("</section>")[0]
    reference_row = uncertainty.split("ResNet-18 (ImageNet, FP32)")[1].split("</tr>")[0]
    # seeds 0 and 1 find 4 and 5 of the 12 SF-XS queries: mean 37.5, range 33.3 to 41.7; the
    # interval resamples queries and seeds (seeded, so the bounds are fixed numbers)
    assert re.findall(r"<td>([^<]*)</td>", reference_row)[:2] == ["2", "37.5 [12.5, 66.7]"]
    assert "33.3–41.7" in reference_row


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / ".git").exists(), reason="not a git checkout")
def test_provenance_names_the_checkout_commit():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert git_commit().split(" ")[0] == head.stdout.strip()


def test_queries_csv_without_ranks_is_a_clear_error(tmp_path):
    tree = write_results_tree(tmp_path, DEMO_RUNS[:1], test_sets=("sf_xs",))
    path = tree.runs_dir / REFERENCE / "recalls" / "sf_xs.queries.csv"
    path.write_text(path.read_text().replace("first_correct_rank", "rank"))
    with pytest.raises(GeolocError, match=r"sf_xs.queries.csv: needs columns query, first_correct_rank"):
        render(tree, tmp_path / "report.html")


def test_pick_queries_shows_disagreements_before_shared_results():
    correct = np.array([[1, 1, 0, 0, 1, 0, 1], [1, 0, 1, 0, 0, 1, 1]], dtype=bool)
    assert pick_queries(correct) == [
        (1, "only_first"),
        (4, "only_first"),
        (2, "only_second"),
        (5, "only_second"),
        (0, "both_correct"),
        (3, "both_wrong"),
    ]


def test_templates_are_found_from_the_checkout_outside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (find_project_path("workflow/report") / "report.html.j2").is_file()
    with pytest.raises(GeolocError, match="workflow/nothing: not found"):
        find_project_path("workflow/nothing")


def test_missing_config_is_a_clear_error(tmp_path):
    tree = write_results_tree(tmp_path, DEMO_RUNS[:1], test_sets=("sf_xs",))
    args = report_args(tree, tmp_path / "r.html")
    args[args.index("--config") + 1] = str(tmp_path / "absent.yaml")
    with pytest.raises(GeolocError, match="absent.yaml: cannot read the config"):
        run_command(report, args)


def test_datasets_json_names_each_sets_protocol_and_overall_counts_subsets_once(tmp_path):
    tree = write_results_tree(tmp_path, DEMO_RUNS[:3], test_sets=("sf_xs", "tokyo_night"))
    datasets = tmp_path / "results" / "datasets.json"
    datasets.write_text(
        json.dumps(
            {
                "root": str(tmp_path / "data"),
                "images": {},
                "test_sets": {
                    "sf_xs": {
                        "label": "San Francisco XS",
                        "positive_dist_threshold": 25.0,
                        "subset_of": None,
                        "source": "Berton et al., CVPR 2022",
                        "database": 16,
                        "queries": 12,
                        "queries_file": None,
                    },
                    # Declared a subset here: the overall score then counts its queries once.
                    "tokyo_night": {
                        "label": "Tokyo by night",
                        "positive_dist_threshold": 25.0,
                        "subset_of": "sf_xs",
                        "source": "",
                        "database": 16,
                        "queries": 12,
                        "queries_file": None,
                    },
                },
                "training": {},
            }
        )
    )
    html = render(tree, tmp_path / "report.html", "--datasets", str(datasets), "--published", str(PUBLISHED))
    assert (
        "<caption>San Francisco XS: 12 queries, 16 database images, correct within 25 m. Source: Berton et al., "
        "CVPR 2022</caption>"
    ) in html
    assert (
        "<caption>Tokyo by night: 12 queries, 16 database images, correct within 25 m; its queries are a subset of "
        "San Francisco XS's</caption>"  # the template's own apostrophe: only values are escaped
    ) in html
    assert "The overall score is the mean of R@1 on San Francisco XS; Tokyo by night is reported on its own" in (
        " ".join(html.split())
    )
    # Without the flag: the study's own labels.
    assert "<caption>Tokyo-Night: 12 queries" in render(tree, tmp_path / "plain.html")


def test_published_comparison_only_for_sets_the_published_table_has(tmp_path):
    runs = (RunSpec("resnet18", "imagenet", "fp32", 0.5, 4 * 3600.0),)
    tree = write_results_tree(tmp_path, runs, test_sets=("sf_xs",), n_queries=20, reported_sizes=(1000, 27191))
    table = tmp_path / "published.csv"
    table.write_text("\n".join(line for line in PUBLISHED.read_text().splitlines() if ",sf_xs," not in line))
    published = render(tree, tmp_path / "report.html", "--published", str(table)).split('<section id="published">')[1]
    assert "None of these test sets is one the study published" in published.split("</section>")[0]


def test_published_models_are_shown_apart_and_never_compared(tmp_path):
    tree = write_results_tree(tmp_path, DEMO_RUNS[:3], test_sets=("sf_xs",))
    table = pd.read_csv(tree.recalls_csv, dtype=str, keep_default_na=False)
    row = table[table["run"] == REFERENCE].iloc[0].copy()
    row["run"], row["kind"], row["backbone"], row["pretraining"] = "salad-dinov2", "published", "dinov2", ""
    row["r1"] = "99.0"  # better than every run: still never named best
    pd.concat([table, row.to_frame().T]).to_csv(tree.recalls_csv, index=False)
    html = render(tree, tmp_path / "report.html", "--conclusions-out", str(tmp_path / "c.txt"))
    recalls = html.split('<section id="recalls">')[1].split("</section>")[0]
    apart = recalls.split("<h3>Published models (not trained here)</h3>")[1]
    assert '<th scope="row">salad-dinov2 (published model, not trained here)</th><td>99.0</td>' in apart
    assert "salad" not in recalls.split("<h3>")[0] and "salad" not in (tmp_path / "c.txt").read_text()


def test_runs_that_did_not_learn_are_labelled_in_every_table(demo_report):
    label = "MobileNetV3-Small (ImageNet, AMP, &lt;img src=x onerror=alert(1)&gt;)"
    for section in ("recalls", "cost", "uncertainty"):
        part = demo_report.split(f'<section id="{section}">')[1].split("</section>")[0]
        row = part.split(label)[1].split("</tr>")[0]
        assert row.startswith(' <span class="tag not-learnt">did not learn</span></th>'), section
    assert demo_report.count("<strong>Did not learn.</strong>") == 1


def test_seeds_give_spread_and_a_sweep_gives_a_plot(tmp_path):
    def run(recall, seed, lr):
        tag = "" if lr == 1e-3 else "lr3e-03"
        return RunSpec(
            "resnet18", "imagenet", "fp32", recall, 400.0, seed=seed, tag=tag, settings=(("lr", lr),) if tag else ()
        )

    runs = (run(0.3, 0, 1e-3), run(0.6, 1, 1e-3), run(0.5, 0, 3e-3), run(0.7, 1, 3e-3))
    tree = write_results_tree(tmp_path, runs, test_sets=("sf_xs",), n_queries=40)
    html = render(tree, tmp_path / "report.html")
    recalls = html.split('<section id="recalls">')[1].split("</section>")[0]
    row = recalls.split("ResNet-18 (ImageNet, FP32, lr 0.001)")[1].split("</tr>")[0]
    found = pd.read_csv(tree.recalls_csv).set_index("run")["r1"]  # R@1 of each seed
    seeds = [found[REFERENCE], found["resnet18-imagenet-fp32-s1"]]
    assert f'<td>{np.mean(seeds):.1f} <span class="spread">± {np.std(seeds, ddof=1):.1f}</span></td>' in row
    assert '<td>36.2 <span class="spread">± 15.9</span></td>' in row
    conclusions = html.split('<section id="conclusions">')[1].split("</section>")[0]
    assert "resampled hierarchically (its seeds, then the queries)" in " ".join(conclusions.split())
    assert "<strong>lr 0.003 vs 0.001.</strong>" in conclusions
    plots = html.split('<section id="plots">')[1]
    assert 'aria-label="sweep lr"' in plots and "Overall R@1 against lr" in " ".join(plots.split())


def test_a_datasets_json_without_test_sets_is_a_clear_error(tmp_path):
    tree = write_results_tree(tmp_path, DEMO_RUNS[:1], test_sets=("sf_xs",))
    datasets = tmp_path / "datasets.json"
    datasets.write_text(json.dumps({"test_sets": {"sf_xs": 25}}))
    with pytest.raises(GeolocError, match=r"datasets.json: test_sets.sf_xs is not an object"):
        render(tree, tmp_path / "report.html", "--datasets", str(datasets))
    datasets.write_text("[]")
    with pytest.raises(GeolocError, match=r"datasets.json: no 'test_sets' object; pass the workflow's"):
        render(tree, tmp_path / "report.html", "--datasets", str(datasets))
