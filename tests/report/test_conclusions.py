"""Conclusion rules on hand-made result tables: claims only where the intervals support them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from geoloc.report.aggregate import COLUMNS, TEXT_COLUMNS
from geoloc.report.conclusions import (
    amp_effect,
    best_overall,
    best_per_test_set,
    best_pretraining,
    data_coverage,
    derive_conclusions,
    difference,
    fastest,
    not_significant,
    pareto,
    pareto_set,
)
from geoloc.report.study import Variant, build_study

REFERENCE = "resnet18-imagenet-fp32-s0"


def ranks_with(n_correct: int, n_queries: int = 100, correct_rank: int = 1) -> np.ndarray:
    """First `n_correct` queries found at `correct_rank`, the rest not found in the top k."""
    ranks = np.zeros(n_queries, dtype=int)
    ranks[:n_correct] = correct_rank
    return ranks


def make_study(
    runs: dict[str, dict], expected: list[str] | None = None, reference: str = REFERENCE, with_ranks: bool = True
):
    """runs: name -> {"variant": (backbone, pretraining, precision), "seed": int, "time": s,
    "ranks": {test_set: rank vector}, optional "nan": [test sets with NaN recall]}."""
    rows, ranks = [], {}
    for name, spec in runs.items():
        backbone, pretraining, precision = spec["variant"]
        for test_set, vector in spec["ranks"].items():
            row = {column: ("" if column in TEXT_COLUMNS else math.nan) for column in COLUMNS}
            row.update(
                run=name,
                backbone=backbone,
                pretraining=pretraining,
                precision=precision,
                seed=float(spec.get("seed", 0)),
                test_set=test_set,
                n_queries=float(len(vector)),
                n_database=500.0,
                training_time_seconds=float(spec.get("time", 100.0)),
            )
            for k in (1, 5, 10, 20):
                recall = 100.0 * np.mean((vector >= 1) & (vector <= k))
                row[f"r{k}"] = math.nan if test_set in spec.get("nan", []) else recall
            rows.append(row)
            queries = [f"queries/q{i:04d}.jpg" for i in range(len(vector))]
            ranks[(name, test_set)] = pd.Series(vector, index=queries) if with_ranks else None
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return build_study(table, ranks, {}, reference, expected if expected is not None else list(runs))


def spec(backbone, pretraining="imagenet", precision="fp32", *, sf, tokyo=None, time=100.0, seed=0, nan=()):
    ranks = {"sf_xs": sf}
    if tokyo is not None:
        ranks["tokyo_night"] = tokyo
    return {"variant": (backbone, pretraining, precision), "seed": seed, "time": time, "ranks": ranks, "nan": list(nan)}


def test_clear_winner_is_named_with_its_margin():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(50, 200)),
            "efficientnet_v2_s-imagenet-fp32-s0": spec("efficientnet_v2_s", sf=ranks_with(150, 200)),
        }
    )
    [overall] = best_overall(study)
    assert overall.winner == Variant("efficientnet_v2_s", "imagenet", "fp32")
    assert overall.text.startswith("EfficientNetV2-S (ImageNet, FP32) is the best backbone overall")
    assert "R@1 75.0%" in overall.text and "+50.0 points" in overall.text


def test_tie_within_confidence_intervals_names_no_winner():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(50)),
            "mobilenet_v3_large-imagenet-fp32-s0": spec("mobilenet_v3_large", sf=np.roll(ranks_with(53), 40)),
        }
    )
    for conclusion in best_overall(study) + best_per_test_set(study):
        assert conclusion.winner is None
        assert "is the best" not in conclusion.text
        assert "No best backbone can be named" in conclusion.text
    [same] = not_significant(study)
    assert "MobileNetV3-Large (ImageNet, FP32) (+3.0 points" in same.text


def test_paired_bootstrap_detects_a_consistent_small_gain():
    # B solves every query A solves plus 8 more: unpaired 95% CIs (about +-10 points) would overlap,
    # but the paired difference is positive in (nearly) every resample.
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(50)),
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(58)),
        }
    )
    change = difference(study, Variant("swin_tiny", "imagenet", "fp32"), study.reference, ["sf_xs"])
    assert change.value == pytest.approx(8.0)
    assert change.significant and change.low > 0
    assert best_overall(study)[0].winner == Variant("swin_tiny", "imagenet", "fp32")


def test_missing_run_is_reported_and_the_rest_still_compared():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(20)),
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(90)),
        },
        expected=[REFERENCE, "convnext_tiny-imagenet-fp32-s0", "swin_tiny-imagenet-fp32-s0"],
    )
    [coverage] = data_coverage(study)
    assert "1 expected run(s) have no results" in coverage.text and "convnext_tiny-imagenet-fp32-s0" in coverage.text
    assert best_overall(study)[0].winner == Variant("swin_tiny", "imagenet", "fp32")


def test_single_run_says_there_is_nothing_to_compare():
    study = make_study({REFERENCE: spec("resnet18", sf=ranks_with(60))})
    conclusions = derive_conclusions(study)
    assert [c.topic for c in conclusions] == ["Data"]
    assert "Only one configuration has results (ResNet-18 (ImageNet, FP32))" in conclusions[0].text
    assert all(c.winner is None for c in conclusions)


def test_nan_recall_is_left_out_of_comparisons_that_need_it():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(30), tokyo=ranks_with(30)),
            "convnext_tiny-imagenet-fp32-s0": spec(
                "convnext_tiny", sf=ranks_with(95), tokyo=ranks_with(95), nan=["tokyo_night"]
            ),
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(70), tokyo=ranks_with(70)),
        }
    )
    assert "No valid R@1 (NaN) for ConvNeXt-Tiny (ImageNet, FP32) on Tokyo-Night" in data_coverage(study)[0].text
    # Overall needs every test set, so ConvNeXt drops out there but still wins SF-XS.
    assert best_overall(study)[0].winner == Variant("swin_tiny", "imagenet", "fp32")
    per_test = {c.topic: c.winner for c in best_per_test_set(study)}
    assert per_test["Best backbone on SF-XS"] == Variant("convnext_tiny", "imagenet", "fp32")
    assert per_test["Best backbone on Tokyo-Night"] == Variant("swin_tiny", "imagenet", "fp32")


def test_missing_per_query_ranks_make_differences_untestable():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(10)),
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(90)),
        },
        with_ranks=False,
    )
    [overall] = best_overall(study)
    assert overall.winner is None and "untestable: per-query ranks missing" in overall.text


def test_best_pretraining_compares_only_the_reference_backbone_and_precision():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(60, 300)),
            "resnet18-places365-fp32-s0": spec("resnet18", "places365", sf=ranks_with(30, 300)),
            "resnet18-gldv2-fp32-s0": spec("resnet18", "gldv2", sf=ranks_with(40, 300)),
            "resnet18-places365-amp-s0": spec("resnet18", "places365", "amp", sf=ranks_with(290, 300)),
        }
    )
    [conclusion] = best_pretraining(study)
    assert conclusion.topic == "Best pretraining for ResNet-18 (FP32)"
    assert conclusion.winner == Variant("resnet18", "imagenet", "fp32")
    assert "runner-up ResNet-18 (Google Landmarks v2, FP32) by +6.7 points" in conclusion.text


def test_amp_effect_reports_time_saved_and_untestable_recall_change_as_not_significant():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(50), time=4 * 3600),
            "resnet18-imagenet-amp-s0": spec(
                "resnet18", precision="amp", sf=np.roll(ranks_with(51), 30), time=2.5 * 3600
            ),
        }
    )
    [amp] = amp_effect(study)
    assert amp.text.startswith(
        "Training the reference ResNet-18 with AMP instead of FP32 takes 38% less training time (2.5 h vs 4.0 h); "
        "its effect on mean R@1 is not significant (+1.0 points"
    )


def test_fastest_names_near_ties_and_its_recall_cost():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(60, 200), time=1000),
            "mobilenet_v3_small-imagenet-fp32-s0": spec("mobilenet_v3_small", sf=ranks_with(20, 200), time=600),
            "mobilenet_v3_large-imagenet-fp32-s0": spec("mobilenet_v3_large", sf=ranks_with(55, 200), time=640),
        }
    )
    [conclusion] = fastest(study)
    assert conclusion.text.startswith("MobileNetV3-Small (ImageNet, FP32) trains fastest (10 min).")
    assert "Within 10% of that time: MobileNetV3-Large (ImageNet, FP32)." in conclusion.text
    assert "40% less training time" in conclusion.text and "loses mean R@1 (\u221220.0 points" in conclusion.text


def test_pareto_set_drops_configurations_slower_and_less_accurate():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(50), time=100),
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(40), time=300),  # dominated
            "efficientnet_v2_s-imagenet-fp32-s0": spec("efficientnet_v2_s", sf=ranks_with(70), time=200),
            "mobilenet_v3_small-imagenet-fp32-s0": spec("mobilenet_v3_small", sf=ranks_with(30), time=50),
        }
    )
    assert [v.backbone for v in pareto_set(study)] == ["mobilenet_v3_small", "resnet18", "efficientnet_v2_s"]
    [conclusion] = pareto(study)
    assert "MobileNetV3-Small (ImageNet, FP32) to ResNet-18 (ImageNet, FP32): +20.0 points, 95% CI" in conclusion.text
    assert "not significant" not in conclusion.text  # every step is a superset of queries: significant


def test_seeds_of_one_configuration_are_pooled():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(40)),
            "resnet18-imagenet-fp32-s1": spec("resnet18", sf=ranks_with(60), seed=1),
        }
    )
    [variant] = study.variants
    assert study.cell(variant, "sf_xs").recalls[1] == pytest.approx(50.0)
    assert study.cell(variant, "sf_xs").ranks.shape == (2, 100)
