"""`geoloc report`: the study's results as one self-contained HTML page.

Everything on the page is computed from the recalls table and the run and baseline folders (see
`geoloc.report.study`), once each of them is checked against the config (`config_check`: results
another config made stop the report before anything is written). The page itself is Jinja2
templates from `workflow/report/` with autoescape on, CSS inline, figures as inline SVG and
thumbnails as data URIs: no request leaves the file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import jinja2
from markupsafe import Markup

from geoloc.atomic import atomic_outputs
from geoloc.errors import GeolocError
from geoloc.report import formatting, plots
from geoloc.report.conclusions import (
    HARDWARE_TOPIC,
    NO_CONCLUSION,
    Conclusion,
    derive_conclusions,
    overall_description,
    paired_tests,
)
from geoloc.report.config_check import check_against_config, read_config
from geoloc.report.gallery import build_galleries
from geoloc.report.published import compare_with_published, read_published
from geoloc.report.sections import (
    cost_rows,
    provenance,
    published_tables,
    recall_tables,
    trained_once,
    uncertainty,
)
from geoloc.report.study import KS, Results, factor_label, load_study, read_datasets

log = logging.getLogger(__name__)

TEMPLATES = "workflow/report"
MAIN_TEMPLATE = "report.html.j2"
STYLESHEET = "report.css"
SIZE_BUDGET_MB = 5.0  # a page this size still opens quickly from a cluster's scratch disk


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recalls", type=Path, required=True, help="recalls CSV from geoloc aggregate")
    parser.add_argument("--runs-dir", type=Path, required=True, help="folder of the run folders")
    parser.add_argument(
        "--baselines-dir", type=Path, help="folder of the baseline folders (default: baselines/ beside --runs-dir)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        help="the workflow's <results>/config.yaml: every result is checked against it, and it is shown",
    )
    parser.add_argument(
        "--reference",
        metavar="RUN",
        help="run the others are compared with (default: the config's reference, else the first run of the grid)",
    )
    parser.add_argument(
        "--expected", nargs="+", metavar="RUN", help="every run of the grid (default: the config's grid)"
    )
    parser.add_argument(
        "--datasets",
        type=Path,
        metavar="JSON",
        help="the workflow's <results>/datasets.json: each test set's label, threshold, counts, subsets and "
        "source (default: the study's own labels)",
    )
    parser.add_argument(
        "--published", type=Path, help="published results CSV, e.g. resources/published-results.csv (default: none)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    parser.add_argument(
        "--conclusions-out", type=Path, metavar="FILE", help="also write the conclusions as plain text, one per line"
    )
    parser.add_argument("--templates", type=Path, help=f"template folder (default: {TEMPLATES})")
    parser.add_argument(
        "--positive-dist-threshold",
        type=float,
        help="metres within which a retrieved image counts as correct in the gallery "
        "(default: the config's evaluation.positive_dist_threshold)",
    )


def run(args: argparse.Namespace) -> None:
    config_text, plan = read_config(args.config)
    expected = (args.expected or list(plan.runs)) + list(plan.baselines)
    baselines_dir = args.baselines_dir or args.runs_dir.parent / "baselines"
    datasets = read_datasets(args.datasets) if args.datasets else None
    # No reference in the config: the first run of the first grid block is the reference.
    reference = args.reference or plan.config.get("reference")
    study = load_study(args.recalls, args.runs_dir, baselines_dir, reference, expected, datasets)
    check_against_config(study, plan)
    tests = paired_tests(study)
    conclusions = derive_conclusions(study, tests)
    threshold = args.positive_dist_threshold
    if threshold is None:
        threshold = plan.config["evaluation"]["positive_dist_threshold"]
    html = render_report(
        study,
        conclusions=conclusions,
        comparisons=tests.size,
        runs_dir=args.runs_dir,
        config_path=args.config,
        config_text=config_text,
        published_path=args.published,
        templates=args.templates or find_project_path(TEMPLATES),
        positive_dist_threshold=threshold,
    )
    texts = {args.out: html}
    if args.conclusions_out:
        texts[args.conclusions_out] = "".join(line + "\n" for line in conclusion_lines(conclusions))
    with atomic_outputs(*texts) as temporaries:  # both or neither, also on a full disk
        for temporary, text in zip(temporaries, texts.values()):
            temporary.write_text(text, encoding="utf-8")
    megabytes = len(html.encode("utf-8")) / 1e6
    log.log(logging.WARNING if megabytes > SIZE_BUDGET_MB else logging.INFO, "wrote %s (%.2f MB)", args.out, megabytes)


def conclusion_lines(conclusions: list[Conclusion]) -> list[str]:
    """The conclusions as plain text, one per line (`--conclusions-out`)."""
    return [c.line for c in conclusions] or [NO_CONCLUSION]


def find_project_path(relative: str) -> Path:
    """`relative` under the current folder (the workflow's), else under this source checkout."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (base / relative).exists():
            return base / relative
    raise GeolocError(f"{relative}: not found in {Path.cwd()} or the geoloc checkout; pass its path")


def render_report(
    study: Results,
    *,
    conclusions: list[Conclusion],
    comparisons: int,
    runs_dir: Path,
    config_path: Path,
    config_text: str,
    published_path: Path | None,
    templates: Path,
    positive_dist_threshold: float,
) -> str:
    if not (templates / MAIN_TEMPLATE).is_file():
        raise GeolocError(f"{templates}: no {MAIN_TEMPLATE} in this template folder")
    published = read_published(published_path) if published_path else None
    figures = {
        "recall_vs_time": plots.recall_vs_time(study),
        "recall_vs_memory": plots.recall_vs_memory(study),
        "recall_curves": plots.recall_curves(study),
        "validation_curves": plots.validation_curves(study),
    }
    context = {
        "study": study,
        "ks": KS,
        "styles": Markup((templates / STYLESHEET).read_text(encoding="utf-8")),
        "conclusions": conclusions,
        "no_conclusion": NO_CONCLUSION,
        "comparisons": comparisons,
        "overall": overall_description(study),
        "factors": [factor_label(f) for f in study.factors],
        "hardware_note": " ".join(c.text for c in conclusions if c.topic == HARDWARE_TOPIC),
        "recall_tables": recall_tables(study),
        "costs": cost_rows(study),
        "figures": {name: Markup(svg) for name, svg in figures.items() if svg},
        "sweeps": {factor: Markup(svg) for factor, svg in plots.sweep_plots(study).items()},
        "published_models": published_tables(study),
        "seeded": any(len(runs) > 1 for v, runs in study.runs.items() if v in study.variants),
        "galleries": build_galleries(study, runs_dir, positive_dist_threshold),
        "threshold": positive_dist_threshold,
        "uncertainty": uncertainty(study),
        "trained_once": trained_once(study),
        "published": compare_with_published(study, published) if published is not None else None,
        "provenance": provenance(study, config_path, config_text),
    }
    env = _environment(templates)
    env.filters["test_set"] = study.test_set_label
    return env.get_template(MAIN_TEMPLATE).render(context)


def _environment(templates: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        percent=formatting.percent,
        p_value=formatting.p_value,
        signed=formatting.signed,
        duration=formatting.duration,
        millions=formatting.millions,
        number=formatting.number,
    )
    env.tests["finite"] = formatting.is_number
    return env
