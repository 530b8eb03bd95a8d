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
    best_backbone,
    data_coverage,
    derive_conclusions,
    did_not_learn,
    factor_effects,
    fastest,
    hardware_note,
    not_significant,
    overall_description,
    paired_tests,
    pareto,
    pareto_set,
    training_gain,
    training_speed,
)
from geoloc.report.plots import sweep_plots
from geoloc.report.study import Variant, build_study, diverged_because

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
    "device", "device_type", "gpus", "speed" (images/s), "iterations", "batch_size", "settings"
    (more train.json hyperparameters), "losses" (train.json epochs' losses)}."""
    rows, ranks, train_logs = [], {}, {}
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
                images_per_second=float(spec.get("speed", 50.0)),
                resize=spec.get("resize", ""),
            )
            for k in (1, 5, 10, 20):
                recall = 100.0 * np.mean((vector >= 1) & (vector <= k))
                row[f"r{k}"] = math.nan if test_set in spec.get("nan", []) else recall
            rows.append(row)
            queries = [f"queries/q{i:04d}.jpg" for i in range(len(vector))]
            ranks[(name, test_set)] = pd.Series(vector, index=queries) if with_ranks else None
        budget = {
            "epochs": 1,
            "iterations_per_epoch": spec.get("iterations", 1000),
            "batch_size": spec.get("batch", 32),
        }
        train_logs[name] = {
            "hyperparameters": {"num_workers": 0, **budget, **spec.get("settings", {})},
            "epochs": [{"epoch": i, "loss": loss} for i, loss in enumerate(spec.get("losses", [5.0]))],
        }
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return build_study(table, ranks, train_logs, reference, expected if expected is not None else list(runs))


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
    overall = conclude(best_backbone, study)[0]
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
    for conclusion in conclude(best_backbone, study):
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
    assert conclude(best_backbone, study)[0].winner == Variant("swin_tiny", "imagenet", "fp32")


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
    assert conclude(best_backbone, study)[0].winner == Variant("swin_tiny", "imagenet", "fp32")


def test_single_run_says_there_is_nothing_to_compare():
    study = make_study({REFERENCE: spec("resnet18", sf=ranks_with(60))})
    conclusions = derive_conclusions(study)
    assert [c.topic for c in conclusions] == ["Data"]
    assert "Only one configuration has results (ResNet-18 (ImageNet, FP32))" in conclusions[0].text
    assert all(c.winner is None for c in conclusions)


def test_without_a_named_reference_the_first_run_is_it_and_the_report_says_so():
    runs = {
        REFERENCE: spec("resnet18", sf=ranks_with(60)),
        "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(60)),
    }
    study = make_study(runs, reference=None)
    assert study.reference == Variant("resnet18", "imagenet", "fp32") and study.reference_implicit
    [note] = conclude(data_coverage, study)
    assert note.text == f"The config names no reference: the first run of the first grid block ({REFERENCE}) is it."


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
    winners = {c.topic: c.winner for c in conclude(best_backbone, study)}
    assert winners["Best backbone overall (mean R@1 over SF-XS, Tokyo-Night)"] == Variant(
        "swin_tiny", "imagenet", "fp32"
    )
    assert winners["Best backbone on SF-XS"] == Variant("convnext_tiny", "imagenet", "fp32")
    assert winners["Best backbone on Tokyo-Night"] == Variant("swin_tiny", "imagenet", "fp32")


def test_missing_per_query_ranks_make_differences_untestable():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(10)),
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(90)),
        },
        with_ranks=False,
    )
    overall = conclude(best_backbone, study)[0]
    assert overall.winner is None and "untestable: per-query ranks missing" in overall.text


def test_best_pretraining_compares_runs_equal_in_every_other_factor():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(60, 300)),
            "resnet18-places365-fp32-s0": spec("resnet18", "places365", sf=ranks_with(30, 300)),
            "resnet18-gldv2-fp32-s0": spec("resnet18", "gldv2", sf=ranks_with(40, 300)),
            "resnet18-places365-amp-s0": spec("resnet18", "places365", "amp", sf=ranks_with(290, 300)),
        }
    )
    [conclusion] = [c for c in conclude(factor_effects, study) if c.topic.startswith("Best pretraining")]
    assert conclusion.topic == "Best pretraining overall (mean R@1 over SF-XS), with FP32"
    assert conclusion.winner == Variant("resnet18", "imagenet", "fp32")
    assert "runner-up ResNet-18 (Google Landmarks v2, FP32) by +6.7 points" in conclusion.text


def test_precision_is_compared_between_matched_runs_with_the_time_it_saves():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(50), time=4 * 3600),
            "resnet18-imagenet-amp-s0": spec(
                "resnet18", precision="amp", sf=np.roll(ranks_with(51), 30), time=2.5 * 3600
            ),
        }
    )
    [amp] = conclude(factor_effects, study)
    assert amp.topic == "Precision AMP vs FP32"
    assert amp.text.startswith("With all other factors equal, overall (mean R@1 over SF-XS): +1.0 points, 95% CI")
    assert amp.text.endswith("not significant, with 38% less training time (2.5 h vs 4.0 h).")


def test_training_time_is_compared_only_between_equal_budgets_on_one_device():
    """The fairness rule: a shorter budget is never "fastest"; across budgets only images/s."""
    runs = {
        REFERENCE: spec("resnet18", sf=ranks_with(60, 200), time=1000, iterations=700, speed=40.0),
        # Trains in a quarter of the time, but only 150 iterations and at a quarter of the speed.
        "mobilenet_v3_small-imagenet-amp-s0": spec(
            "mobilenet_v3_small", precision="amp", sf=ranks_with(55, 200), time=250, iterations=150, speed=10.0
        ),
    }
    study = make_study(runs)
    assert conclude(fastest, study) == [] and conclude(pareto, study) == []
    [speed] = conclude(training_speed, study)
    # The budget differs, so it is a factor of the study, named in each label.
    assert study.factors == ["backbone", "precision", "iterations_per_epoch"]
    assert speed.text == (
        "Training images per second on 1 \u00d7 NVIDIA H200, fastest first: ResNet-18 (ImageNet, FP32, "
        "iterations_per_epoch 700) 40.0, MobileNetV3-Small (ImageNet, AMP, iterations_per_epoch 150) 10.0."
    )
    assert all("fastest (" not in c.text and "less training time" not in c.text for c in derive_conclusions(study))

    # A pair that differs in its budget alone: images per second, not training time.
    runs["resnet18-imagenet-fp32-s0-short"] = spec(
        "resnet18", sf=ranks_with(60, 200), time=200, iterations=150, speed=30.0, tag="short"
    )
    [short] = [c for c in conclude(factor_effects, make_study(runs)) if c.topic.startswith("iterations_per_epoch")]
    assert short.topic == "iterations_per_epoch 150 vs 700"
    assert short.text.endswith(
        "training 25% fewer images per second (30.0 vs 40.0 on the same device; their budgets differ, so training "
        "times are not compared)."
    )

    # The same budget on the same device: now training times are compared.
    runs["mobilenet_v3_small-imagenet-fp32-s0"] = spec(
        "mobilenet_v3_small", sf=ranks_with(20, 200), time=600, iterations=700
    )
    runs["mobilenet_v3_large-imagenet-fp32-s0"] = spec(
        "mobilenet_v3_large", sf=ranks_with(55, 200), time=640, iterations=700
    )
    long, short = conclude(fastest, make_study(runs))
    assert short.topic == "Fastest among runs of 150 iterations of 32 images on 1 \u00d7 NVIDIA H200"
    assert short.text.startswith("ResNet-18 (ImageNet, FP32, iterations_per_epoch 150, short) trains fastest")
    conclusion = long
    assert conclusion.topic == "Fastest among runs of 700 iterations of 32 images on 1 \u00d7 NVIDIA H200"
    assert conclusion.text.startswith(
        "MobileNetV3-Small (ImageNet, FP32, iterations_per_epoch 700) trains fastest among runs of 700 iterations"
    )
    assert "Within 10% of that time: MobileNetV3-Large (ImageNet, FP32, iterations_per_epoch 700)." in conclusion.text
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
    assert study.cell(variant, "sf_xs").spread() == pytest.approx(np.std([40.0, 60.0], ddof=1))
    assert study.cell(variant, "sf_xs").ranks.shape == (2, 100)


def test_comparisons_with_seeds_include_seed_to_seed_variance():
    """Known answer: A's two seeds reach 45% and 75% R@1, B's both 50%, on 1,000 queries. Over
    queries alone A's +10 points would be certain; resampling seeds draws A's worse seed twice
    (a -5 point difference) a quarter of the time, so the 95% interval reaches -5 (less about a
    point of query noise) and +25: not significant."""
    a = "swin_tiny-imagenet-fp32"
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(500, 1000)),
            "resnet18-imagenet-fp32-s1": spec("resnet18", sf=ranks_with(500, 1000), seed=1),
            f"{a}-s0": spec("swin_tiny", sf=ranks_with(450, 1000)),
            f"{a}-s1": spec("swin_tiny", sf=ranks_with(750, 1000), seed=1),
        }
    )
    tests = paired_tests(study)
    change = tests.difference(Variant("swin_tiny", "imagenet", "fp32"), study.reference, ["sf_xs"])
    assert change.value == pytest.approx(10.0)
    assert -7.0 < change.low < -4.5 and 24.0 < change.high < 27.0
    assert not change.significant
    # The same means from one seed each: the queries alone make +10 points certain.
    one_seed = make_study(
        {REFERENCE: spec("resnet18", sf=ranks_with(500, 1000)), f"{a}-s0": spec("swin_tiny", sf=ranks_with(600, 1000))}
    )
    single = paired_tests(one_seed).difference(Variant("swin_tiny", "imagenet", "fp32"), one_seed.reference, ["sf_xs"])
    assert single.value == pytest.approx(10.0) and single.significant and single.low > 7


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
    overall = conclude(best_backbone, study)[0]
    assert "overall (mean R@1 over SF-XS, Tokyo-XS)" in overall.text and "highest R@1 (45.0%)" in overall.text
    assert overall.winner is None and "+0.0 points" in overall.text
    night = {c.topic: c for c in conclude(best_backbone, study)}["Best backbone on Tokyo-Night"]
    assert night.winner == Variant("swin_tiny", "imagenet", "fp32")


def test_datasets_json_labels_sets_and_says_which_are_subsets():
    datasets = {
        "test_sets": {
            "pitts30k": {
                "label": "Pitts30k",
                "positive_dist_threshold": 25.0,
                "subset_of": None,
                "source": "Arandjelovic 2016",
                "database": 10000,
                "queries": 6816,
            },
            "pitts_night": {
                "label": "Pitts night",
                "positive_dist_threshold": 25.0,
                "subset_of": "pitts30k",
                "source": "",
                "database": 10000,
                "queries": 300,
            },
        }
    }

    def two(backbone, night):
        return {
            "variant": (backbone, "imagenet", "fp32"),
            "ranks": {"pitts30k": ranks_with(50), "pitts_night": ranks_with(night)},
        }

    study = make_study({REFERENCE: two("resnet18", 10), "swin_tiny-imagenet-fp32-s0": two("swin_tiny", 40)})
    assert study.overall_test_sets == ["pitts30k", "pitts_night"]  # without datasets.json nothing is known
    study.datasets = datasets
    assert study.overall_test_sets == ["pitts30k"] and study.test_set_label("pitts_night") == "Pitts night"
    assert study.protocol("pitts30k") == {
        "label": "Pitts30k",
        "threshold": 25.0,
        "n_queries": 6816,
        "n_database": 10000,
        "source": "Arandjelovic 2016",
        "subset_of": None,
    }
    assert overall_description(study).endswith(
        "Pitts night is reported on its own and not counted again, since its queries are a subset of Pitts30k's"
    )


def test_each_trained_run_is_measured_against_its_own_baseline():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(60, 200)),
            "resnet18-imagenet-baseline": baseline("resnet18", sf=ranks_with(20, 200)),
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(100, 200)),
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
        "for 2 of 2 configuration(s): ResNet-18 (ImageNet, FP32) +20.0 points, 95% CI +14.5 to +26.0, adjusted p "
        "< 0.001; Swin-Tiny (ImageNet, FP32) +5.0 points, 95% CI +2.5 to +8.5, adjusted p 0.001."
    )
    # Swin-Tiny's untrained network finds more than either trained one: still never a candidate.
    assert conclude(best_backbone, study)[0].winner == Variant("swin_tiny", "imagenet", "fp32")
    assert all("untrained" not in c.text for c in conclude(best_backbone, study))


def test_a_run_that_did_not_learn_is_labelled_and_left_out_of_comparisons():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(60, 200), iterations=700),
            "resnet18-imagenet-baseline": baseline("resnet18", sf=ranks_with(20, 200)),
            # Better than the ResNet, but no better than its own untrained network: it did not learn.
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=np.roll(ranks_with(92, 200), 50), iterations=700),
            "swin_tiny-imagenet-baseline": baseline("swin_tiny", sf=ranks_with(90, 200)),
            # Short amp on a CPU, and a diverged run: both labelled from train.json.
            "swin_tiny-imagenet-amp-s0": spec(
                "swin_tiny",
                "imagenet",
                "amp",
                sf=ranks_with(90, 200),
                iterations=150,
                device_type="cpu",
                device="cpu",
                gpus=0,
            ),
            "resnet18-imagenet-amp-s0": spec(
                "resnet18", "imagenet", "amp", sf=ranks_with(60, 200), iterations=700, losses=[5.0, math.nan]
            ),
        }
    )
    assert [v.name for v in study.not_learnt] == [
        "swin_tiny-imagenet-fp32-iterations_per_epoch700",
        "swin_tiny-imagenet-amp-iterations_per_epoch150",
        "resnet18-imagenet-amp-iterations_per_epoch700",
    ]
    assert study.comparable == [study.reference]
    swin = study.not_learnt[0]
    value, low, high = study.learning(swin).gain
    assert value == pytest.approx(1.0) and low <= 0 < high
    [listed] = conclude(did_not_learn, study)
    assert listed.text.startswith("3 configuration(s) did not learn")
    assert (
        "Swin-Tiny (ImageNet, FP32, iterations_per_epoch 700) (+1.0 points of overall R@1 over its untrained "
        "baseline, 95% CI" in listed.text
    )
    assert (
        "Swin-Tiny (ImageNet, AMP, iterations_per_epoch 150) (+0.0 points of overall R@1 over its untrained "
        "baseline, 95% CI +0.0 to +0.0): "
        "short: 150 iterations, where the longest run trained 700 (AMP on a CPU is bfloat16 autocast"
    ) in listed.text
    assert (
        "ResNet-18 (ImageNet, AMP, iterations_per_epoch 700) (training diverged: resnet18-imagenet-amp-s0: "
        "non-finite loss in epoch 1)" in (listed.text)
    )
    # Left out of every comparison: no best backbone, no precision effect, only the reference gains.
    others = derive_conclusions(study)
    assert not [c for c in others if c.topic.startswith(("Best", "Precision", "Not significant"))]
    assert [c.text.count("points") for c in others if c.topic.startswith("Gain")] == [1]


def test_factors_are_what_varies_and_each_is_compared_with_the_rest_equal():
    def run(backbone, lr, found, tag=""):
        return spec(backbone, sf=ranks_with(found, 400), settings={"lr": lr, "image_size": 320}, tag=tag)

    study = make_study(
        {
            REFERENCE: run("resnet18", 1e-05, 100),
            "resnet18-imagenet-fp32-s0-lr3e-05": run("resnet18", 3e-05, 200),
            "efficientnet_b0-imagenet-fp32-s0": run("efficientnet_b0", 1e-05, 150),
            "efficientnet_b0-imagenet-fp32-s0-lr3e-05": run("efficientnet_b0", 3e-05, 160),
        }
    )
    assert study.factors == ["backbone", "lr"]  # image_size is the same everywhere, num_workers a runtime knob
    assert [v.label for v in study.variants][:2] == [
        "ResNet-18 (ImageNet, FP32, lr 1e-05)",
        "ResNet-18 (ImageNet, FP32, lr 3e-05)",
    ]
    [lr] = conclude(factor_effects, study)
    assert lr.topic == "lr 3e-05 vs 1e-05"
    assert lr.text.startswith("With all other factors equal, overall (mean R@1 over SF-XS): ResNet-18: +25.0 points")
    assert "; EfficientNet-B0: +2.5 points" in lr.text
    # Backbones are ranked only between runs of the same lr.
    topics = [c.topic for c in conclude(best_backbone, study) if "overall" in c.topic]
    assert topics == [
        "Best backbone overall (mean R@1 over SF-XS), with lr 1e-05",
        "Best backbone overall (mean R@1 over SF-XS), with lr 3e-05",
    ]
    # The swept numeric key gets a plot: R@1 against lr, one line per backbone.
    [figure] = sweep_plots(study).values()
    assert "R@1 against lr" in figure and ">ResNet-18<" in figure and ">EfficientNet-B0<" in figure


def test_aggregators_are_a_factor_with_their_descriptor_memory():
    def run(backbone, aggregator, found, dim):
        settings = {"aggregator": aggregator, "descriptor_dim": dim}
        return spec(backbone, sf=ranks_with(found, 400), settings=settings)

    study = make_study(
        {
            REFERENCE: run("resnet18", "gem", 100, 512),
            "resnet18-imagenet-fp32-s0-netvlad": run("resnet18", "netvlad", 200, 4096),
            "resnet50-imagenet-fp32-s0": run("resnet50", "gem", 150, 512),
        }
    )
    assert study.factors == ["backbone", "aggregator"]  # the descriptor dimension follows the aggregator
    netvlad = study.variants[1]
    assert netvlad.label == "ResNet-18 (ImageNet, FP32, NetVLAD)"
    assert study.costs(netvlad)["descriptor_dim"] == 4096
    assert study.costs(netvlad)["memory_mb_per_million"] == 4096 * 4  # float32, one million images
    [aggregator] = conclude(factor_effects, study)
    assert aggregator.topic == "Aggregator NetVLAD vs GeM"
    assert aggregator.text.startswith("With all other factors equal, overall (mean R@1 over SF-XS): ResNet-18: +25.0")
    # Backbones are compared with GeM only: ResNet-18 with NetVLAD is not a candidate.
    [best] = [c for c in conclude(best_backbone, study) if "overall" in c.topic]
    assert best.topic == "Best backbone overall (mean R@1 over SF-XS), with GeM" and best.winner.backbone == "resnet50"


def test_an_evaluation_sweep_is_a_factor_and_unknown_differences_are_never_pooled_as_seeds():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(100, 400)),
            "resnet18-imagenet-fp32-s0-r320": spec("resnet18", sf=ranks_with(160, 400), resize="320x320"),
            # Same settings and seed as the reference as far as the summaries tell: kept apart.
            "resnet18-imagenet-fp32-s0-mystery": spec("resnet18", sf=ranks_with(120, 400)),
        }
    )
    assert study.factors == ["evaluation.resize"]
    assert [v.label for v in study.variants] == [
        "ResNet-18 (ImageNet, FP32, evaluation.resize none, run resnet18-imagenet-fp32)",
        "ResNet-18 (ImageNet, FP32, evaluation.resize 320x320)",
        "ResNet-18 (ImageNet, FP32, evaluation.resize none, run resnet18-imagenet-fp32-mystery)",
    ]
    assert all(len(runs) == 1 for runs in study.runs.values())


def test_tagged_variants_are_levels_of_a_tag_not_backbones():
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(50, 200)),
            "resnet18-imagenet-fp32-s0-long": spec("resnet18", sf=ranks_with(150, 200), tag="long"),
            "swin_tiny-imagenet-fp32-s0": spec("swin_tiny", sf=ranks_with(60, 200)),
        }
    )
    [best] = [c for c in conclude(best_backbone, study) if "overall" in c.topic]
    assert best.topic == "Best backbone overall (mean R@1 over SF-XS)" and best.winner.backbone == "swin_tiny"
    assert "long" not in best.text
    [tag] = conclude(factor_effects, study)
    assert tag.topic == "Tag long vs (no tag)" and tag.text.startswith(
        "With all other factors equal, overall (mean R@1 over SF-XS): ResNet-18: +50.0 points"
    )


def test_training_times_on_different_hardware_are_never_compared():
    runs = {
        REFERENCE: spec("resnet18", sf=ranks_with(50), time=1000, device="NVIDIA H200"),
        "resnet18-imagenet-amp-s0": spec("resnet18", precision="amp", sf=ranks_with(50), time=500, device="Tesla V100"),
        "mobilenet_v3_small-imagenet-fp32-s0": spec("mobilenet_v3_small", sf=ranks_with(30), time=300, gpus=2),
    }
    study = make_study(runs)
    # Three hardware (one device twice, but with 2 GPUs instead of 1): nothing to compare times with.
    assert conclude(fastest, study) == [] and conclude(pareto, study) == [] and conclude(training_speed, study) == []
    [note] = conclude(hardware_note, study)
    assert note.text.startswith(
        "The runs trained on different hardware (1 \u00d7 NVIDIA H200: ResNet-18 (ImageNet, FP32);"
    )
    assert "2 \u00d7 NVIDIA H200: MobileNetV3-Small (ImageNet, FP32)" in note.text
    [amp] = conclude(factor_effects, study)
    assert amp.text.endswith("not significant (trained on different hardware: times not compared).")

    # Two runs on each of two GPU models: times are compared within each, named by hardware.
    runs["efficientnet_b0-imagenet-fp32-s0"] = spec("efficientnet_b0", sf=ranks_with(40), time=400, gpus=2)
    [on_two] = conclude(fastest, make_study(runs))
    assert on_two.topic == "Fastest among runs of 1,000 iterations of 32 images on 2 \u00d7 NVIDIA H200"
    assert on_two.text.startswith("MobileNetV3-Small (ImageNet, FP32) trains fastest among runs of 1,000 iterations")
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
    cpu = {"device": "cpu (x86_64, 2 threads)", "device_type": "cpu", "gpus": 0}
    study = make_study(
        {
            REFERENCE: spec("resnet18", sf=ranks_with(50), time=600, **cpu),
            "resnet18-imagenet-amp-s0": spec("resnet18", precision="amp", sf=ranks_with(50), time=900, **cpu),
        }
    )
    [amp] = conclude(factor_effects, study)
    assert "with 50% more training time (15 min vs 10 min)." in amp.text
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
    [alone] = conclude(factor_effects, make_study(runs))
    assert "+4.0 points" in alone.text and "not significant" not in alone.text

    # Twenty more configurations as good as the reference: the report now makes many more claims.
    for i in range(20):
        runs[f"resnet18-imagenet-fp32-s0-c{i}"] = spec("resnet18", sf=ranks_with(100, 200), tag=f"c{i}")
    study = make_study(runs)
    tests = paired_tests(study)
    [among_many] = [c for c in factor_effects(study, tests) if c.topic == "Precision AMP vs FP32"]
    assert "+4.0 points" in among_many.text and "not significant" in among_many.text
    change = tests.difference(Variant("resnet18", "imagenet", "amp"), study.reference, ["sf_xs"])
    assert change.p < 0.05 <= change.adjusted_p and tests.size > 20


def test_a_conclusion_is_one_line_of_text_whatever_its_names_hold():
    assert Conclusion("Data", "run a\nb  c").line == "Data. run a b c"


def test_train_json_tells_a_diverged_run():
    learnt = {"epochs": [{"epoch": 0, "loss": 9.1, "val_recalls": {"r1": 40.0}}], "best_val_r1": 40.0}
    assert diverged_because(learnt) is None
    assert diverged_because({**learnt, "non_finite_steps": 3}) == "3 steps with a non-finite loss skipped"
    nan_recall = {"epochs": [{"epoch": 0, "loss": 9.1, "val_recalls": {"r1": math.nan}}], "best_val_r1": None}
    assert diverged_because(nan_recall) == "non-finite validation R@1 in epoch 0"
