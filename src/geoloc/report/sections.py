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
from geoloc.report.study import KS, Study

# train.json keys listed per run under Provenance.
RUN_FACTS = ("device", "started_at", "finished_at", "best_epoch", "resumed_from_iteration")


def recall_tables(study: Study) -> list[dict[str, Any]]:
    """Per test set: each variant's recall@k, its delta to the reference, the best per k."""
    tables = []
    for test_set in study.test_sets:
        cells = {v: c for v in study.variants if (c := study.cell(v, test_set))}
        best = {
            k: max((c.recalls[k] for c in cells.values() if math.isfinite(c.recalls[k])), default=math.nan) for k in KS
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
                        "delta": cell.recalls[k] - reference.recalls[k] if reference else math.nan,
                        "best": cell.recalls[k] == best[k],
                    }
                    for k in KS
                ],
            }
            for v, cell in cells.items()
        ]
        first = next(iter(cells.values()))
        tables.append(
            {"test_set": test_set, "n_queries": first.n_queries, "n_database": first.n_database, "rows": rows}
        )
    return tables


def cost_rows(study: Study) -> list[dict[str, Any]]:
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
                "devices": study.devices(v),
            }
        )
    return rows


def uncertainty(study: Study) -> list[dict[str, Any]]:
    """Per test set: 95% bootstrap CIs of each recall@k, and how wide R@1's are on average."""
    sections = []
    for test_set in study.test_sets:
        rows, widths = [], []
        for v in study.variants:
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
        n_queries = next((study.cell(v, test_set).n_queries for v in study.variants if study.cell(v, test_set)), 0)
        sections.append(
            {
                "test_set": test_set,
                "n_queries": n_queries,
                "rows": rows,
                "mean_width": float(np.mean(widths)) if widths else math.nan,
            }
        )
    return sections


def provenance(study: Study, config_path: Path, config_text: str) -> dict[str, Any]:
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
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {package: sorted(values) for package, values in sorted(versions.items())},
        "devices": sorted(set(study.table["device"]) - {""}),
        "first_started": started[0] if started else None,
        "last_finished": finished[-1] if finished else None,
        "runs": [
            {"run": run, **{key: logs.get(run, {}).get(key) for key in RUN_FACTS}}
            for runs in study.runs.values()
            for run in runs
        ],
        "missing_runs": study.missing_runs,
        "missing_test_sets": study.missing_test_sets,
    }


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
