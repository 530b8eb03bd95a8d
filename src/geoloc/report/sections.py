"""What each section of the report shows, as plain data for the templates.

The templates only lay these out; every number is computed here or in the modules they call.
"""

from __future__ import annotations

import datetime
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.report.bootstrap import interval
from geoloc.report.labels import backbone_label, pretraining_label
from geoloc.report.study import KS, Results

# train.json keys listed per run under Provenance.
# fmt: off
RUN_FACTS = (
    "device", "gpus", "world_size", "training_time_seconds", "image_cache_build_seconds",
    "compile_seconds", "started_at", "finished_at", "best_epoch", "resumed_from_iteration",
)
# fmt: on


def recall_tables(study: Results) -> list[dict[str, Any]]:
    """Per test set: its protocol, each variant's recall@k (mean over seeds, and their standard
    deviation; baselines beside their trained variants), its delta to the reference, the best
    trained variant that learnt per k."""
    tables = []
    for test_set in study.test_sets:
        cells = {v: c for v in study.table_order() if (c := study.cell(v, test_set))}
        if not cells:
            continue
        best = {
            k: max(
                (c.recalls[k] for v, c in cells.items() if v in study.comparable and math.isfinite(c.recalls[k])),
                default=math.nan,
            )
            for k in KS
        }
        reference = cells.get(study.reference)
        rows = [
            {
                "variant": v,
                "is_reference": v == study.reference,
                "runs": len(cell.runs),
                "values": [
                    {
                        "k": k,
                        "value": cell.recalls[k],
                        "spread": cell.spread(k),
                        "delta": cell.recalls[k] - reference.recalls[k] if reference else math.nan,
                        "best": v in study.comparable and cell.recalls[k] == best[k],
                    }
                    for k in KS
                ],
            }
            for v, cell in cells.items()
        ]
        tables.append({"test_set": test_set, "protocol": study.protocol(test_set), "rows": rows})
    return tables


def published_tables(study: Results) -> list[dict[str, Any]]:
    """Per test set: each published model's recall@k, apart from the grid (not trained here)."""
    tables = []
    for test_set in study.test_sets:
        rows = [{"variant": v, "recalls": c.recalls} for v in study.published if (c := study.cell(v, test_set))]
        if rows:
            tables.append({"test_set": test_set, "rows": rows})
    return tables


def cost_rows(study: Results) -> list[dict[str, Any]]:
    rows = []
    for v in study.variants:
        costs = study.costs(v)
        rows.append(
            {
                "variant": v,
                "is_reference": v == study.reference,
                "costs": costs,
                "validation_share": (
                    costs["val_seconds"] / costs["training_time_seconds"]
                    if costs["training_time_seconds"] > 0
                    else math.nan
                ),
                "hardware": [h.label for h in study.hardware(v)],
                "budget": study.budget(v),
            }
        )
    return rows


def trained_once(study: Results) -> str | None:
    """Who was trained with one seed only, as the subject of the uncertainty section's warning
    (their intervals cover the queries, not training noise); None when none was."""
    once = [v.label for v in study.variants if len(study.runs[v]) == 1]
    if not once:
        return None
    if len(once) == len(study.variants):
        return "Every configuration was"
    return f"{', '.join(once)} {'was' if len(once) == 1 else 'were'}"


def uncertainty(study: Results) -> list[dict[str, Any]]:
    """Per test set: 95% bootstrap CIs of each recall@k, and how wide R@1's are on average."""
    sections = []
    for test_set in study.test_sets:
        rows, widths = [], []
        for v in study.table_order():
            cell = study.cell(v, test_set)
            if cell is None:
                continue
            intervals = {}
            for k in KS:
                samples = study.recall_samples(v, test_set, k)
                intervals[k] = interval(samples) if samples is not None else None
            if intervals[1]:
                widths.append(intervals[1][1] - intervals[1][0])
            run_r1 = [r for r in cell.run_recalls[1] if math.isfinite(r)]
            rows.append(
                {
                    "variant": v,
                    "runs": len(cell.runs),
                    "recalls": cell.recalls,
                    "intervals": intervals,
                    "seed_range": (min(run_r1), max(run_r1)) if len(run_r1) > 1 else None,
                }
            )
        n_queries = study.protocol(test_set)["n_queries"]
        sections.append(
            {
                "test_set": test_set,
                "n_queries": n_queries,
                "rows": rows,
                "mean_width": float(np.mean(widths)) if widths else math.nan,
            }
        )
    return sections


def provenance(study: Results, config_path: Path, config_text: str) -> dict[str, Any]:
    logs = study.train_logs
    versions: dict[str, set[str]] = {}
    for train in logs.values():
        for package, version in (train.get("versions") or {}).items():
            versions.setdefault(package, set()).add(str(version))
    started = sorted(str(t["started_at"]) for t in logs.values() if t.get("started_at"))
    finished = sorted(str(t["finished_at"]) for t in logs.values() if t.get("finished_at"))
    return {
        "config_path": config_path,
        "config_text": config_text,
        "git_commit": git_commit(),
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {package: sorted(values) for package, values in sorted(versions.items())},
        "hardware": sorted({h.label for v in study.variants for h in study.hardware(v)}),
        "first_started": started[0] if started else None,
        "last_finished": finished[-1] if finished else None,
        "runs": [
            {"run": run, "variant": variant, **{key: logs.get(run, {}).get(key) for key in RUN_FACTS}}
            for variant in study.table_order()
            for run in study.runs[variant]
        ],
        "weights": weights_files(study),
        "missing_runs": study.missing_runs,
        "missing_test_sets": study.missing_test_sets,
    }


def weights_files(study: Results) -> list[dict[str, Any]]:
    """Each pretrained weights file the runs started from, with the sha256 they recorded."""
    files: dict[tuple, dict[str, Any]] = {}
    for variant in study.table_order():
        for run in study.runs[variant]:
            weights = study.train_logs.get(run, {}).get("weights") or {}
            if weights:
                key = (variant.backbone, variant.pretraining, weights.get("path"), weights.get("sha256"))
                source = f"{backbone_label(variant.backbone)}, {pretraining_label(variant.pretraining)}"
                entry = files.setdefault(key, {"path": None, "format": None, **weights, "source": source, "runs": []})
                entry["runs"].append(run)
    return list(files.values())


def git_commit() -> str:
    """The commit of the geoloc checkout that made the report, '+ local changes' when dirty."""
    source = Path(__file__).resolve().parent

    def git(*words: str) -> str:
        done = subprocess.run(["git", *words], cwd=source, capture_output=True, text=True, check=True, timeout=10)
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (geoloc is not installed from a git checkout)"
    return f"{commit} + local changes" if dirty else commit
