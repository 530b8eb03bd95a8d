"""`geoloc report` on a hand-made results tree: sections, tables, escaping, self-containment.

`write_results_tree` builds what the workflow would leave behind (run folders with train.json,
recall CSVs, per-query CSVs, tiny test-set JPEGs, a config) following the file contracts;
the browser test reuses it.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geoloc.data.names import format_image_name
from geoloc.errors import GeolocError
from geoloc.report import aggregate
from geoloc.report import render as report
from geoloc.report.aggregate import write_recalls
from geoloc.report.gallery import pick_queries
from geoloc.report.render import find_project_path
from geoloc.report.sections import git_commit

XSS = "<script>alert(1)</script>"
XSS_TAG = "<img src=x onerror=alert(1)>"  # no '/', so it can be part of a run folder name
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


@dataclass(frozen=True)
class ResultsTree:
    recalls_csv: Path
    runs_dir: Path
    config: Path
    expected: list[str]


def write_results_tree(
    root: Path,
    runs: tuple[RunSpec, ...] = DEMO_RUNS,
    *,
    test_sets: tuple[str, ...] = ("sf_xs", "tokyo_night"),
    n_queries: int = 12,
    n_database: int = 16,
    reported_sizes: tuple[int, int] | None = None,
    missing: tuple[str, ...] = (),
) -> ResultsTree:
    """Write test sets, run folders and a config under `root`, then aggregate them."""
    runs_dir = root / "results" / "runs"
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
            _write_recalls(runs_dir / spec.name, test_set, test_dir, ranks, queries, database, reported_sizes)
    for spec in runs:
        _write_train_json(runs_dir / spec.name, spec)
    config = root / "config.yaml"
    config.write_text(f"note: '{XSS}'\nreference: {REFERENCE}\nsynthetic: true\n", encoding="utf-8")
    recalls_csv = root / "results" / "recalls.csv"
    run_command(aggregate, ["--out", str(recalls_csv), *(str(runs_dir / s.name) for s in runs)])
    return ResultsTree(recalls_csv, runs_dir, config, [s.name for s in runs] + list(missing))


def run_command(module, argv: list[str]) -> None:
    """Parse `argv` with the command's own arguments and run it (as `geoloc COMMAND` would)."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    module.run(parser.parse_args(argv))


def render(tree: ResultsTree, out: Path, *extra: str) -> str:
    args = [
        "--recalls",
        str(tree.recalls_csv),
        "--runs-dir",
        str(tree.runs_dir),
        "--config",
        str(tree.config),
        "--reference",
        REFERENCE,
        "--expected",
        *tree.expected,
        "--out",
        str(out),
        *extra,
    ]
    run_command(report, args)
    return out.read_text(encoding="utf-8")


def _write_jpeg(folder: Path, east: float, north: float, color: tuple[int, int, int]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    name = format_image_name(east, north, 0.0)
    pixels = np.full((120, 160, 3), color, dtype=np.uint8)  # larger than a thumbnail
    pixels[::8] = 255  # stripes, so thumbnails are not flat colour
    Image.fromarray(pixels).save(folder / name, quality=90)
    return f"{folder.name}/{name}"


def _write_recalls(run_dir, test_set, test_dir, ranks, queries, database, reported_sizes):
    recalls = run_dir / "recalls"
    recalls.mkdir(parents=True, exist_ok=True)
    n_queries, n_database = reported_sizes or (len(queries), len(database))
    r = {k: 100.0 * np.mean((ranks >= 1) & (ranks <= k)) for k in (1, 5, 10, 20)}
    (recalls / f"{test_set}.csv").write_text(
        "test_set,n_queries,n_database,n_queries_without_positive,r1,r5,r10,r20,descriptor_seconds,"
        "search_seconds,latency_ms_per_image,test_dir\n"
        f"{test_set},{n_queries},{n_database},0,{r[1]},{r[5]},{r[10]},{r[20]},1.5,0.01,2.5,{test_dir}\n",
        encoding="utf-8",
    )
    lines = ["query,first_correct_rank,has_positive,predictions,distances_m"]
    for i, (query, rank) in enumerate(zip(queries, ranks)):
        top = [database[(i + j) % len(database)] for j in range(10)]
        distances = [8.0 if j + 1 == rank else 140.0 + 10 * j for j in range(10)]
        lines.append(f"{query},{rank},1,{'|'.join(top)},{'|'.join(f'{d:.1f}' for d in distances)}")
    (recalls / f"{test_set}.queries.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


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
    train = {
        "run": {
            "name": spec.name,
            "backbone": spec.backbone,
            "pretraining": spec.pretraining,
            "precision": spec.precision,
            "seed": spec.seed,
            "tag": spec.tag or None,
        },
        "hyperparameters": {"loss": "cosface", "epochs": 3},
        "weights": None,
        "epochs": epochs,
        "best_epoch": 2,
        "best_val_r1": epochs[-1]["val_recalls"]["r1"],
        "train_seconds": spec.seconds * 0.9,
        "val_seconds": spec.seconds * 0.1,
        "training_time_seconds": spec.seconds,
        "images_per_second": 42.0,
        "peak_memory_mb": 812.0,
        "device": "cpu",
        "params": 11_200_000,
        "trainable_params": 8_400_000,
        "resumed_from_iteration": None,
        "versions": {"python": "3.11.2", "torch": "2.14.1", "geoloc": "0.1.0"},
        "started_at": "2025-01-02T10:00:00+00:00",
        "finished_at": "2025-01-02T10:09:00+00:00",
    }
    (run_dir / "train.json").write_text(json.dumps(train), encoding="utf-8")


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
    # a superset of the reference's queries: 2 it alone finds + 1 shared success + 1 shared failure)
    assert page.tables == {"recalls": 2, "cost": 1, "retrievals": 8, "uncertainty": 2, "provenance": 2}
    assert demo_report.count("<svg") == 3


def test_conclusions_name_the_clear_winner_and_no_amp_recall_effect(demo_report):
    assert "EfficientNetV2-S (ImageNet, AMP) is the best backbone overall" in demo_report
    assert "takes 35% less training time (4 min vs 7 min); its effect on mean R@1 is not significant" in demo_report
    assert (
        "MobileNetV3-Small (ImageNet, AMP, &lt;img src=x onerror=alert(1)&gt;) trains fastest (3 min)." in demo_report
    )


def test_recall_table_marks_best_and_shows_delta_to_reference(demo_report):
    sf_table = demo_report.split("<caption>SF-XS: 12 queries, 16 database images</caption>")[1].split("</table>")[0]
    efficientnet_row = sf_table.split("EfficientNetV2-S (ImageNet, AMP)")[1].split("</tr>")[0]
    # 10 of 12 found at 1 vs the reference's 4 of 12: +50.0 points, and the best of the column.
    assert '<strong title="best">83.3</strong> <span class="delta">(+50.0)</span>' in efficientnet_row
    reference_row = sf_table.split("ResNet-18 (ImageNet, FP32)")[1].split("</tr>")[0]
    assert "<td>33.3</td>" in reference_row and "delta" not in reference_row


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
    (tmp_path / "config.yaml").write_text("seeds: [0]\n")
    tree = ResultsTree(tmp_path / "recalls.csv", tmp_path / "runs", tmp_path / "config.yaml", [REFERENCE])
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
    (tree.runs_dir / "swin_tiny-imagenet-fp32-s0" / "recalls" / "tokyo_night.csv").unlink()
    run_command(aggregate, ["--out", str(tree.recalls_csv), *(str(tree.runs_dir / r.name) for r in runs)])
    html = render(tree, tmp_path / "report.html")
    assert "<code>swin_tiny-imagenet-fp32-s0</code>: no results on Tokyo-Night" in html
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
    args = [
        "--recalls",
        str(tree.recalls_csv),
        "--runs-dir",
        str(tree.runs_dir),
        "--config",
        str(tmp_path / "absent.yaml"),
        "--reference",
        REFERENCE,
        "--expected",
        REFERENCE,
        "--out",
        str(tmp_path / "r.html"),
    ]
    with pytest.raises(GeolocError, match="absent.yaml: cannot read the config"):
        run_command(report, args)
