"""Conclusion rules on hand-made result tables: claims only where the intervals support them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from geoloc.report.aggregate import COLUMNS, TEXT_COLUMNS
from geoloc.report.bootstrap import holm
from geoloc.report.conclusions import (
    Conclusion,
    amp_effect,
    best_overall,
    best_per_test_set,
    best_pretraining,
    data_coverage,
    derive_conclusions,
    fastest,
    hardware_note,
    not_significant,
    overall_description,
    paired_tests,
    pareto,
    pareto_set,
    training_gain,
)
from geoloc.report.study import Variant, build_study

REFERENCE = "resnet18-imagenet-fp32-s0"


def conclude(rule, study):
    """One rule's conclusions, its tests corrected over the whole report's family."""
    return rule(study, paired_tests(study))


def ranks_with(n_correct: int, n_queries: int = 100, correct_rank: int = 1) -> np.ndarray:
    """First `n_correct` queries found at `correct_rank`, the rest not found in the top k."""
    ranks = np.zeros(n_queries, dtype=int)
    ranks[:n_correct] = correct_rank
    return ranks


def make_study(
    runs: dict[str, dict], expected: list[str] | None = None, reference: str = REFERENCE, with_ranks: bool = True
):
    """runs: name -> {"variant": (backbone, pretraining, precision), "seed": int, "time": s,
    "ranks": {test_set: rank vector}, optional "nan": [test sets with NaN recall], "kind",
    "device", "device_type", "gpus"}."""
    rows, ranks = [], {}
    for name, spec in runs.items():
        backbone, pretraining, precision = spec["variant"]
        for test_set, vector in spec["ranks"].items():
            row = {column: ("" if column in TEXT_COLUMNS else math.nan) for column in COLUMNS}
            row.update(
                run=name,
                kind=spec.get("kind", "trained"),
                tag=spec.get("tag", ""),
                backbone=backbone,
                pretraining=pretraining,
                precision=precision,
                seed=float(spec.get("seed", 0)),
                test_set=test_set,
                n_queries=float(len(vector)),
                n_database=500.0,
                training_time_seconds=float(spec.get("time", 100.0)),
                device=spec.get("device", "NVIDIA H200"),
                device_type=spec.get("device_type", "cuda"),
                gpus=float(spec.get("gpus", 1)),
                world_size=float(spec.get("world_size", spec.get("gpus", 1))),
            )
            for k in (1, 5, 10, 20):
                recall = 100.0 * np.mean((vector >= 1) & (vector <= k))
                row[f"r{k}"] = math.nan if test_set in spec.get("nan", []) else recall
            rows.append(row)
            queries = [f"queries/q{i:04d}.jpg" for i in range(len(vector))]
            ranks[(name, test_set)] = pd.Series(vector, index=queries) if with_ranks else None
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return build_study(table, ranks, {}, reference, expected if expected is not None else list(runs))


def spec(backbone, pretraining="imagenet", precision="fp32", *, sf, tokyo=None, time=100.0, seed=0, nan=(), **extra):
    ranks = {"sf_xs": sf}
    if tokyo is not None:
        ranks["tokyo_night"] = tokyo
    return {
        "variant": (backbone, pretraining, precision),
        "seed": seed,
        "time": time,
        "ranks": ranks,
        "nan": list(nan),
        **extra,
    }


def baseline(backbone, pretraining="imagenet", **ranks):
    """An untrained baseline's spec (no training time), e.g. baseline("resnet18", sf=...)."""
    return spec(backbone, pretraining, time=math.nan, kind="baseline", **ranks)


def test_clear_winner_is_named_with_its_margin():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(50, 200)),
            "efficientnet_v2_s-imagenet-fp32-s0": spec("efficientnet_v2_s", sf=ranks_with(150, 200)),
        }
    )
    [overall] = conclude(best_overall, study)
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
    for conclusion in conclude(best_overall, study) + conclude(best_per_test_set, study):
        assert conclusion.winner is None
        assert "is the best" not in conclusion.text
        assert "No best backbone can be named" in conclusion.text
    [same] = conclude(not_significant, study)
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
    change = paired_tests(study).difference(Variant("swin_tiny", "imagenet", "fp32"), study.reference, ["sf_xs"])
    assert change.value == pytest.approx(8.0)
    assert change.significant and change.low > 0
    assert conclude(best_overall, study)[0].winner == Variant("swin_tiny", "imagenet", "fp32")


def test_missing_run_is_reported_and_the_rest_still_compared():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(20)),
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(90)),
        },
        expected=[REFERENCE, "convnext_tiny-imagenet-fp32-s0", "swin_tiny-imagenet-fp32-s0"],
    )
    [coverage] = conclude(data_coverage, study)
    assert "1 expected run(s) have no results" in coverage.text and "convnext_tiny-imagenet-fp32-s0" in coverage.text
    assert conclude(best_overall, study)[0].winner == Variant("swin_tiny", "imagenet", "fp32")


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
    assert (
        "No valid R@1 (NaN) for ConvNeXt-Tiny (ImageNet, FP32) on Tokyo-Night" in conclude(data_coverage, study)[0].text
    )
    # Overall needs every test set, so ConvNeXt drops out there but still wins SF-XS.
    assert conclude(best_overall, study)[0].winner == Variant("swin_tiny", "imagenet", "fp32")
    per_test = {c.topic: c.winner for c in conclude(best_per_test_set, study)}
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
    [overall] = conclude(best_overall, study)
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
    [conclusion] = conclude(best_pretraining, study)
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
    [amp] = conclude(amp_effect, study)
    assert amp.text.startswith(
        "Training the reference ResNet-18 with AMP instead of FP32 on a GPU (NVIDIA H200) takes 38% less training "
        "time (2.5 h vs 4.0 h); its effect on overall R@1 is not significant (+1.0 points"
    )
    assert "bfloat16" not in amp.text


def test_fastest_names_near_ties_and_its_recall_cost():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(60, 200), time=1000),
            "mobilenet_v3_small-imagenet-fp32-s0": spec("mobilenet_v3_small", sf=ranks_with(20, 200), time=600),
            "mobilenet_v3_large-imagenet-fp32-s0": spec("mobilenet_v3_large", sf=ranks_with(55, 200), time=640),
        }
    )
    [conclusion] = conclude(fastest, study)
    assert conclusion.text.startswith("MobileNetV3-Small (ImageNet, FP32) trains fastest (10 min).")
    assert "Within 10% of that time: MobileNetV3-Large (ImageNet, FP32)." in conclusion.text
    assert "40% less training time" in conclusion.text and "loses overall R@1 (\u221220.0 points" in conclusion.text


def test_pareto_set_drops_configurations_slower_and_less_accurate():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(50), time=100),
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(40), time=300),  # dominated
            "efficientnet_v2_s-imagenet-fp32-s0": spec("efficientnet_v2_s", sf=ranks_with(70), time=200),
            "mobilenet_v3_small-imagenet-fp32-s0": spec("mobilenet_v3_small", sf=ranks_with(30), time=50),
        }
    )
    assert [v.backbone for v in pareto_set(study, study.variants, ["sf_xs"])] == [
        "mobilenet_v3_small",
        "resnet18",
        "efficientnet_v2_s",
    ]
    [conclusion] = conclude(pareto, study)
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


def test_overall_counts_tokyo_nights_queries_once():
    # Tokyo-Night's queries are Tokyo-XS's night third: B's night advantage is already in Tokyo-XS,
    # so overall it ties with A (a mean over all three would put B 10 points ahead).
    def three(backbone, night):
        return {
            "variant": (backbone, "imagenet", "fp32"),
            "ranks": {"sf_xs": ranks_with(50), "tokyo_xs": ranks_with(40), "tokyo_night": ranks_with(night)},
        }

    study = make_study({REFERENCE: three("resnet18", 10), "swin_tiny-imagenet-fp32-s0": three("swin_tiny", 40)})
    assert study.overall_test_sets == ["sf_xs", "tokyo_xs"]
    assert overall_description(study) == (
        "the mean of R@1 on SF-XS and Tokyo-XS, each test set weighted equally; Tokyo-Night is reported on its "
        "own and not counted again, since its queries are a subset of Tokyo-XS's"
    )
    [overall] = conclude(best_overall, study)
    assert "overall (mean R@1 over SF-XS, Tokyo-XS)" in overall.text and "highest R@1 (45.0%)" in overall.text
    assert overall.winner is None and "+0.0 points" in overall.text
    night = {c.topic: c for c in conclude(best_per_test_set, study)}["Best backbone on Tokyo-Night"]
    assert night.winner == Variant("swin_tiny", "imagenet", "fp32")


def test_each_trained_run_is_measured_against_its_own_baseline():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(60, 200)),
            "resnet18-imagenet-baseline": baseline("resnet18", sf=ranks_with(20, 200)),
            # An untrained network better than every trained one is still never the best backbone.
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(40, 200)),
            "swin_tiny-imagenet-baseline": baseline("swin_tiny", sf=ranks_with(90, 200)),
        }
    )
    assert [v.name for v in study.table_order()] == [
        "resnet18-imagenet-baseline",
        "resnet18-imagenet-fp32",
        "swin_tiny-imagenet-baseline",
        "swin_tiny-imagenet-fp32",
    ]
    [gain] = conclude(training_gain, study)
    assert gain.topic == "Gain over the untrained baseline on SF-XS"
    # Paired over the same 200 queries (the trained run finds a superset): a narrow interval.
    assert gain.text == (
        "Training raises R@1 significantly over the untrained network of the same backbone and pretraining "
        "for 1 of 2 configuration(s): ResNet-18 (ImageNet, FP32) +20.0 points, 95% CI +14.5 to +26.0, adjusted p "
        "< 0.001; Swin-Tiny (ImageNet, FP32) \u221225.0 points, 95% CI \u221231.5 to \u221219.0, adjusted p < 0.001."
    )
    [overall] = conclude(best_overall, study)
    assert overall.winner == Variant("resnet18", "imagenet", "fp32")
    assert all("untrained" not in c.text for c in conclude(best_per_test_set, study))


def test_training_times_on_different_hardware_are_never_compared():
    runs = {
        REFERENCE: spec("resnet18", sf=ranks_with(50), time=1000, device="NVIDIA H200"),
        "resnet18-imagenet-amp-s0": spec("resnet18", precision="amp", sf=ranks_with(50), time=500, device="Tesla V100"),
        "mobilenet_v3_small-imagenet-fp32-s0": spec("mobilenet_v3_small", sf=ranks_with(30), time=300, gpus=2),
    }
    study = make_study(runs)
    # Three hardware (one device twice, but with 2 GPUs instead of 1): nothing to compare times with.
    assert conclude(fastest, study) == [] and conclude(pareto, study) == []
    [note] = conclude(hardware_note, study)
    assert note.text.startswith(
        "The runs trained on different hardware (1 \u00d7 NVIDIA H200: ResNet-18 (ImageNet, FP32);"
    )
    assert "2 \u00d7 NVIDIA H200: MobileNetV3-Small (ImageNet, FP32)" in note.text
    [amp] = conclude(amp_effect, study)
    assert (
        "ran on different hardware (1 \u00d7 NVIDIA H200 vs 1 \u00d7 Tesla V100), so its training times are not compared"
        in amp.text
    )
    assert "less training time" not in amp.text

    # Two runs on each of two GPU models: times are compared within each, named by hardware.
    runs["efficientnet_b0-imagenet-fp32-s0"] = spec("efficientnet_b0", sf=ranks_with(40), time=400, gpus=2)
    [on_two] = conclude(fastest, make_study(runs))
    assert on_two.topic == "Fastest on 2 \u00d7 NVIDIA H200"
    assert on_two.text.startswith("MobileNetV3-Small (ImageNet, FP32) trains fastest on 2 \u00d7 NVIDIA H200 (5 min).")
    assert "Compared with the reference" not in on_two.text  # the reference trained on 1 GPU


def test_cpu_runs_with_another_process_count_are_other_hardware():
    cpu = {"device": "cpu (x86_64, 2 threads)", "device_type": "cpu", "gpus": 0}
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(50), time=1000, world_size=1, **cpu),
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(40), time=400, world_size=2, **cpu),
        }
    )
    assert conclude(fastest, study) == []
    [note] = conclude(hardware_note, study)
    assert (
        "cpu (x86_64, 2 threads): ResNet-18 (ImageNet, FP32); cpu (x86_64, 2 threads), 2 processes: Swin" in note.text
    )


def test_seeds_on_different_hardware_keep_a_configuration_out_of_time_comparisons():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(50), time=1000),
            "resnet18-imagenet-fp32-s1": spec("resnet18", sf=ranks_with(50), time=600, seed=1, device="Tesla V100"),
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(40), time=400),
        }
    )
    assert conclude(fastest, study) == []
    [note] = conclude(hardware_note, study)
    assert "the seeds of ResNet-18 (ImageNet, FP32) trained on more than one" in note.text


def test_amp_on_a_cpu_is_said_to_be_bfloat16_autocast():
    study = make_study(
        {
            REFERENCE: spec(
                "resnet18", sf=ranks_with(50), time=600, device="cpu (x86_64, 2 threads)", device_type="cpu", gpus=0
            ),
            "resnet18-imagenet-amp-s0": spec(
                "resnet18",
                precision="amp",
                sf=ranks_with(50),
                time=900,
                device="cpu (x86_64, 2 threads)",
                device_type="cpu",
                gpus=0,
            ),
        }
    )
    [amp] = conclude(amp_effect, study)
    assert amp.text.startswith("Training the reference ResNet-18 with AMP instead of FP32 on a CPU takes 50% more")
    assert amp.text.endswith(
        "On a CPU, AMP is bfloat16 autocast: its speed depends on the processor's bf16 support, and fp16 AMP on a "
        "GPU behaves differently."
    )


def test_holm_multiplies_the_smallest_p_value_by_the_number_of_tests():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([0.04, 0.03]) == pytest.approx([0.06, 0.06])  # 0.04 alone: never below an earlier adjusted value


def test_a_claim_significant_alone_is_not_significant_among_many():
    # AMP finds 8 more of 200 queries than the reference: p about 0.004 on its own.
    runs = {
        REFERENCE: spec("resnet18", sf=ranks_with(100, 200)),
        "resnet18-imagenet-amp-s0": spec("resnet18", precision="amp", sf=ranks_with(108, 200)),
    }
    [alone] = conclude(amp_effect, make_study(runs))
    assert "raises overall R@1 (+4.0 points" in alone.text

    # Twenty more configurations as good as the reference: the report now makes 40 claims.
    for i in range(20):
        runs[f"resnet18-imagenet-fp32-s0-c{i}"] = spec("resnet18", sf=ranks_with(100, 200), tag=f"c{i}")
    study = make_study(runs)
    tests = paired_tests(study)
    [among_many] = amp_effect(study, tests)
    assert "its effect on overall R@1 is not significant (+4.0 points" in among_many.text
    change = tests.difference(Variant("resnet18", "imagenet", "amp"), study.reference, ["sf_xs"])
    assert change.p < 0.05 <= change.adjusted_p and tests.size == 41


def test_a_conclusion_is_one_line_of_text_whatever_its_names_hold():
    assert Conclusion("Data", "run a\nb  c").line == "Data. run a b c"
