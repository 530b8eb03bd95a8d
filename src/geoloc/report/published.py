"""Our numbers beside the student study's published ones (resources/published-results.csv).

The comparison only makes sense on the real test sets. A test set counts as real when its
name and its query and database counts are those of the published dataset, so a synthetic
city laid out under the same names is never compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from geoloc.errors import GeolocError
from geoloc.report.study import KS, Results, Variant

# test set -> (queries, database images) of the datasets the study used.
PUBLISHED_TEST_SETS = {"sf_xs": (1000, 27191), "tokyo_xs": (315, 12771), "tokyo_night": (105, 12771)}
# fmt: off
PUBLISHED_COLUMNS = (
    "backbone", "pretraining", "precision", "loss", "train_hours", "test_set", "r1", "r5", "r10", "r20",
)
# fmt: on


@dataclass(frozen=True)
class PublishedRow:
    variant: Variant
    ours: dict[int, float]
    published: dict[int, float]  # NaN where the study did not publish that k
    our_hours: float
    published_hours: float

    @property
    def differences(self) -> dict[int, float]:
        return {k: self.ours[k] - self.published[k] for k in KS}


def read_published(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, comment="#", dtype={"loss": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise GeolocError(f"{path}: not a readable published-results CSV: {exc}") from exc
    missing = [column for column in PUBLISHED_COLUMNS if column not in table.columns]
    if missing:
        raise GeolocError(f"{path}: column {missing[0]} is missing")
    return table


def is_published_test_set(study: Results, test_set: str) -> bool:
    sizes = {(cell.n_queries, cell.n_database) for (_, t), cell in study.cells.items() if t == test_set}
    return sizes == {PUBLISHED_TEST_SETS.get(test_set)}


def compare_with_published(study: Results, published: pd.DataFrame) -> dict[str, list[PublishedRow]]:
    """Per real test set that the published table has, each variant that the study also published
    (same loss, nothing else changed), side by side."""
    comparison = {}
    published_sets = set(published["test_set"])
    for test_set in study.test_sets:
        if test_set not in published_sets or not is_published_test_set(study, test_set):
            continue
        rows = []
        for variant in study.variants:
            match = _match(study, published, variant, test_set)
            cell = study.cell(variant, test_set)
            if match is None or cell is None:
                continue
            row = PublishedRow(
                variant=variant,
                ours=cell.recalls,
                published={k: float(match[f"r{k}"]) for k in KS},
                our_hours=study.costs(variant)["training_time_seconds"] / 3600.0,
                published_hours=float(match["train_hours"]),
            )
            rows.append(row)
        comparison[test_set] = rows
    return comparison


def _match(study: Results, published: pd.DataFrame, variant: Variant, test_set: str) -> pd.Series | None:
    # The study's runs are the reference's settings (the loss is matched below); a variant that
    # changes another setting, or a tag that tells apart equal settings, is not one of them.
    study_settings = dict(study.reference.settings) if study.reference else {}
    if any(key != "loss" and study_settings.get(key) != value for key, value in variant.settings):
        return None
    if variant.tag and "tag" in study.factors:
        return None
    runs = study.table[study.table["run"].isin(study.runs[variant])]
    loss = runs["loss"].iloc[0]
    hits = published[
        (published["backbone"] == variant.backbone)
        & (published["pretraining"] == variant.pretraining)
        & (published["precision"] == variant.precision)
        & (published["loss"] == loss)
        & (published["test_set"] == test_set)
    ]
    return hits.iloc[0] if len(hits) else None
