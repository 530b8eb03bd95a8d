"""The study's conclusions, written from the numbers by fixed rules.

Recall is compared on R@1, paired over queries (`bootstrap.recall_samples`). Every difference
the rules test is one hypothesis of one family, corrected together (Holm-Bonferroni on the
bootstrap p-values, `PairedTests`): a difference is claimed only when its adjusted p-value is
below 0.05; otherwise the sentence says the data cannot tell the two apart. "Overall" is the
mean R@1 of the test sets whose queries are distinct (`Results.overall_test_sets`).

Each comparison holds every other factor of the grid equal (matched runs, `matched_groups`); with
several seeds a variant's bootstrap resamples its seeds as well as the queries, so the tests
include seed-to-seed variance. A trained configuration that did not learn (its gain over the
untrained baseline is not above zero at 95%, or its loss went non-finite) is listed once and
left out of every comparison. Training times are compared only between runs on the same
hardware (device model, GPU and process count) with the same iterations and batch size; speed
across budgets only as images per second on the same hardware. Untrained baselines are only
ever what training is measured against, never a candidate. A run with no or NaN recall is left
out of a comparison and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from geoloc.report import formatting as fmt
from geoloc.report.bootstrap import holm, interval, p_value
from geoloc.report.study import RUN_FACTORS, Hardware, Results, Variant, factor_label, level_text, setting_label

# Wall-clock times of identical jobs vary by a few percent, so smaller gaps are "the same time".
TIME_TOLERANCE = 0.10
ALPHA = 0.05  # family-wise error rate of the report's claims
NO_CONCLUSION = "No conclusion can be drawn from the results present."
HARDWARE_TOPIC = "Hardware"
NOT_LEARNT_TOPIC = "Did not learn"


@dataclass(frozen=True)
class Conclusion:
    topic: str
    text: str
    winner: Variant | None = None  # set only when the tests support naming a best

    @property
    def line(self) -> str:
        """The conclusion as one line of plain text (a newline in a name becomes a space)."""
        return " ".join(f"{self.topic}. {self.text}".split())


@dataclass(frozen=True)
class Difference:
    """R@1 of a minus R@1 of b in points, its 95% bootstrap interval and its p-values."""

    value: float
    low: float
    high: float
    p: float  # two-sided, this comparison alone
    adjusted_p: float  # Holm-Bonferroni over every comparison of the report

    @property
    def significant(self) -> bool:
        return self.adjusted_p < ALPHA

    def describe(self) -> str:
        return (
            f"{fmt.signed(self.value)} points, 95% CI {fmt.interval(self.low, self.high)}, "
            f"adjusted p {fmt.p_value(self.adjusted_p)}"
        )


class PairedTests:
    """The paired differences the conclusions test, as one family for the Holm correction.

    The family is what the rules ask for: `paired_tests` runs them once to collect it, corrects
    it, and the rules then run again and read the adjusted p-values. Before `correct`, a
    difference carries its uncorrected p-value.
    """

    def __init__(self, study: Results) -> None:
        self.study = study
        # (pair, test sets) -> (value, low, high, p) of the min-name variant minus the other, or
        # None when untestable; a vs b and b vs a are one hypothesis.
        self._tested: dict[tuple, tuple[float, float, float, float] | None] = {}
        self._adjusted: dict[tuple, float] | None = None

    @property
    def size(self) -> int:
        """How many hypotheses the family holds."""
        return sum(result is not None for result in self._tested.values())

    def difference(self, a: Variant, b: Variant, test_sets: list[str]) -> Difference | None:
        """Mean R@1 of a minus b over `test_sets`, or None when it cannot be tested."""
        first, second = sorted((a, b), key=lambda v: v.name)
        key = (first, second, tuple(test_sets))
        if key not in self._tested:
            if self._adjusted is not None:
                raise RuntimeError(f"{a.name} vs {b.name} on {test_sets} is not in the corrected family")
            self._tested[key] = self._test(first, second, test_sets)
        if self._tested[key] is None:
            return None
        value, low, high, p = self._tested[key]
        if a != first:
            value, low, high = -value, -high, -low
        adjusted = p if self._adjusted is None else self._adjusted[key]
        return Difference(value, low, high, p, adjusted)

    def tested(self) -> list[tuple[Variant, Variant, tuple[str, ...], Difference]]:
        """Every testable difference of the corrected family: (a, b, test sets, a minus b)."""
        return [
            (a, b, test_sets, self.difference(a, b, list(test_sets)))
            for (a, b, test_sets), result in self._tested.items()
            if result is not None
        ]

    def correct(self) -> None:
        """Holm-Bonferroni over every testable difference asked for so far; the family is then closed."""
        keys = [key for key, result in self._tested.items() if result is not None]
        self._adjusted = dict(zip(keys, holm([self._tested[key][3] for key in keys])))

    def _test(self, a: Variant, b: Variant, test_sets: list[str]) -> tuple[float, float, float, float] | None:
        samples = []
        for test_set in test_sets:
            sample_a, sample_b = self.study.recall_samples(a, test_set), self.study.recall_samples(b, test_set)
            if sample_a is None or sample_b is None:
                return None
            samples.append(sample_a - sample_b)
        mean_samples = np.mean(samples, axis=0)
        value = mean_recall(self.study, a, test_sets) - mean_recall(self.study, b, test_sets)
        return (value, *interval(mean_samples), p_value(mean_samples, value))


Rule = Callable[[Results, PairedTests], list[Conclusion]]


def derive_conclusions(study: Results, tests: PairedTests | None = None) -> list[Conclusion]:
    """All conclusions, in the order the report lists them."""
    if tests is None:
        tests = paired_tests(study)
    return [conclusion for rule in RULES for conclusion in rule(study, tests)]


def paired_tests(study: Results) -> PairedTests:
    """The family of every difference the rules test, Holm-corrected."""
    tests = PairedTests(study)
    for rule in RULES:
        rule(study, tests)  # a first pass only to learn which differences the rules test
    tests.correct()
    return tests


def overall_description(study: Results) -> str:
    """How the overall score is formed, in words."""
    sets = study.overall_test_sets
    text = f"the mean of R@1 on {_join(list(map(study.test_set_label, sets)))}" + (
        ", each test set weighted equally" if len(sets) > 1 else ""
    )
    left_out = [t for t in study.test_sets if t not in sets]
    for test_set in left_out:
        superset = study.test_set_label(study.subset_of(test_set))
        text += (
            f"; {study.test_set_label(test_set)} is reported on its own and not counted again, "
            f"since its queries are a subset of {superset}'s"
        )
    return text


def mean_recall(study: Results, variant: Variant, test_sets: list[str], k: int = 1) -> float:
    """Mean recall@k over `test_sets`; NaN when any of them has no valid value."""
    values = [study.recall(variant, test_set, k) for test_set in test_sets]
    return float(np.mean(values)) if values and all(map(math.isfinite, values)) else math.nan


def rank(
    study: Results,
    tests: PairedTests,
    candidates: list[Variant],
    test_sets: list[str],
    topic: str,
    what: str,
    scope: str,
) -> Conclusion | None:
    """Name the best candidate by mean R@1 over `test_sets`, only if it beats every other one.

    `what` and `scope` make the sentence: "X is the best {what}{scope}".
    """
    scored = [(mean_recall(study, v, test_sets), v) for v in candidates]
    scored = sorted((item for item in scored if math.isfinite(item[0])), key=lambda item: -item[0])
    if len(scored) < 2:
        return None
    (best_value, best), others = scored[0], [variant for _, variant in scored[1:]]
    differences = {other: tests.difference(best, other, test_sets) for other in others}
    unresolved = [other for other in others if not (differences[other] and differences[other].significant)]
    if not unresolved:
        runner_up = others[0]
        text = (
            f"{best.label} is the best {what}{scope}: R@1 {fmt.percent(best_value)}%, ahead of the "
            f"runner-up {runner_up.label} by {differences[runner_up].describe()}."
        )
        return Conclusion(topic, text, winner=best)
    leads = "; ".join(
        (
            f"{other.label} ({differences[other].describe()})"
            if differences[other]
            else f"{other.label} (untestable: per-query ranks missing)"
        )
        for other in unresolved
    )
    text = (
        f"No best {what} can be named{scope}: {best.label} has the highest R@1 "
        f"({fmt.percent(best_value)}%), but its lead is not significant over {leads}."
    )
    return Conclusion(topic, text)


def data_coverage(study: Results, tests: PairedTests) -> list[Conclusion]:
    """Say what the conclusions are missing: runs without results, NaN recalls, a lone run."""
    notes = []
    if study.missing_runs:
        notes.append(
            f"{len(study.missing_runs)} expected run(s) have no results and are left out: "
            f"{', '.join(study.missing_runs)}."
        )
    if study.reference is None:
        notes.append(f"The reference run {study.reference_run} has no results: comparisons with it are skipped.")
    elif study.reference_implicit:
        notes.append(
            f"The config names no reference: the first run of the first grid block ({study.reference_run}) is it."
        )
    invalid = [
        f"{variant.label} on {study.test_set_label(test_set)}"
        for (variant, test_set), cell in study.cells.items()
        if not cell.valid() and variant in study.variants
    ]
    if invalid:
        notes.append(f"No valid R@1 (NaN) for {', '.join(invalid)}: left out of those comparisons.")
    if len(study.variants) == 1:
        only = study.variants[0]
        notes.append(f"Only one configuration has results ({only.label}): there is nothing to compare it with.")
    return [Conclusion("Data", note) for note in notes]


def training_gain(study: Results, tests: PairedTests) -> list[Conclusion]:
    """Per test set: each trained variant that learnt against the untrained network it started from."""
    conclusions = []
    for test_set in study.test_sets:
        pairs = [
            (v, baseline)
            for v in study.comparable
            if (baseline := study.baseline_of(v)) and study.cell(v, test_set) and study.cell(baseline, test_set)
        ]
        if not pairs:
            continue
        gains = {v: tests.difference(v, baseline, [test_set]) for v, baseline in pairs}
        raised = [v for v, d in gains.items() if d and d.significant and d.value > 0]
        items = "; ".join(
            (
                f"{v.label} {d.describe()}{'' if d.significant else ', not significant'}"
                if d
                else f"{v.label} untestable (per-query ranks missing)"
            )
            for v, d in gains.items()
        )
        text = (
            "Training raises R@1 significantly over the untrained network of the same backbone and pretraining "
            f"for {len(raised)} of {len(gains)} configuration(s): {items}."
        )
        conclusions.append(Conclusion(f"Gain over the untrained baseline on {study.test_set_label(test_set)}", text))
    return conclusions


def did_not_learn(study: Results, tests: PairedTests) -> list[Conclusion]:
    """The trained variants that did not learn, once, with their gain and why: they are left out
    of every comparison between configurations."""
    items = []
    for variant in study.not_learnt:
        learning = study.learning(variant)
        if learning.diverged:
            item = f"{variant.label} (training diverged: {'; '.join(learning.diverged)})"
        else:
            value, low, high = learning.gain
            item = (
                f"{variant.label} ({fmt.signed(value)} points of overall R@1 over its untrained baseline, "
                f"95% CI {fmt.interval(low, high)})"
            )
        if learning.reasons:
            item += f": {'; '.join(learning.reasons)}"
        items.append(item)
    if not items:
        return []
    text = (
        f"{len(items)} configuration(s) did not learn (a gain over the untrained baseline whose 95% interval "
        f"reaches zero, or a non-finite loss) and are left out of every comparison: {'; '.join(items)}."
    )
    return [Conclusion(NOT_LEARNT_TOPIC, text)]


def matched_groups(study: Results, factor: str, variants: list[Variant]) -> list[list[Variant]]:
    """`variants` grouped by their levels of every factor but `factor` (matched runs): the groups
    with at least two levels of `factor`, in grid order."""
    others = [f for f in study.factors if f != factor]
    groups: dict[tuple, list[Variant]] = {}
    for variant in variants:
        groups.setdefault(tuple(variant.level(f) for f in others), []).append(variant)
    return [group for group in groups.values() if len({v.level(factor) for v in group}) > 1]


def context(study: Results, factor: str, group: list[Variant]) -> str:
    """What a matched group holds equal, in words ('ResNet-18, FP32, lr 1e-05'); '' when nothing varies."""
    held = [(f, group[0].level(f)) for f in study.factors if f != factor]
    return ", ".join(level_phrase(f, value) for f, value in held if not (f == "tag" and not value))


def level_phrase(factor: str, value: object) -> str:
    return level_text(factor, value) if factor in RUN_FACTORS else setting_label(factor, value)


def best_backbone(study: Results, tests: PairedTests) -> list[Conclusion]:
    """Backbones ranked overall and per test set, each time among runs equal in every other factor."""
    sets = study.overall_test_sets
    overall = f"overall (mean R@1 over {', '.join(map(study.test_set_label, sets))})"
    scopes = [(overall, sets)] + [(f"on {study.test_set_label(t)}", [t]) for t in study.test_sets]
    return [found for scope, test_sets in scopes for found in rank_factor(study, tests, "backbone", test_sets, scope)]


def rank_factor(study: Results, tests: PairedTests, factor: str, test_sets: list[str], scope: str) -> list[Conclusion]:
    """In each matched group, the best level of `factor` by mean R@1 over `test_sets`."""
    what = factor_label(factor).lower()
    conclusions = []
    for group in matched_groups(study, factor, study.comparable):
        held = context(study, factor, group)
        where = f"{scope}, with {held}" if held else scope
        found = rank(study, tests, group, test_sets, f"Best {what} {where}", what, f" {where}")
        conclusions += [found] if found else []
    return conclusions


def factor_effects(study: Results, tests: PairedTests) -> list[Conclusion]:
    """Every factor but the backbone, all other factors equal: two levels as a difference
    ('lr 3e-05 vs 1e-05'), more as a ranking. Each difference also says how the training cost
    changes, as far as that is fair to compare (`_time_phrase`)."""
    sets = study.overall_test_sets
    scope = f"overall (mean R@1 over {', '.join(map(study.test_set_label, sets))})"
    conclusions = []
    for factor in study.factors:
        groups = matched_groups(study, factor, study.comparable)
        if factor == "backbone" or not groups:
            continue
        if any(len({v.level(factor) for v in group}) > 2 for group in groups):
            conclusions += rank_factor(study, tests, factor, sets, scope)
            continue
        pairs: dict[tuple, list[str]] = {}
        for group in groups:
            first, second = group[0], next(v for v in group if v.level(factor) != group[0].level(factor))
            change = tests.difference(second, first, sets)
            verdict = (
                "untestable (per-query ranks missing)"
                if change is None
                else change.describe() + ("" if change.significant else ", not significant")
            )
            held = context(study, factor, group)
            item = f"{held + ': ' if held else ''}{verdict}{_time_phrase(study, second, first)}"
            pairs.setdefault((first.level(factor), second.level(factor)), []).append(item)
        for (a, b), items in pairs.items():
            topic = f"{factor_label(factor)} {level_text(factor, b)} vs {level_text(factor, a)}"
            text = f"With all other factors equal, {scope}: {'; '.join(items)}."
            if factor == "precision" and _device_types(study, study.comparable) == {"cpu"}:
                text += (
                    " On a CPU, AMP is bfloat16 autocast: its speed depends on the processor's bf16 support, "
                    "and fp16 AMP on a GPU behaves differently."
                )
            conclusions.append(Conclusion(topic, text))
    return conclusions


def same_budget(study: Results, a: Variant, b: Variant) -> bool:
    """Whether two variants' training times may be compared: the same recorded iterations and
    batch size, every run on one and the same hardware."""
    budget = study.budget(a)
    return budget is not None and budget == study.budget(b) and _shared_hardware(study, [a, b]) is not None


def _time_phrase(study: Results, a: Variant, b: Variant) -> str:
    """How a's training cost compares with b's, only as far as it is fair: training time between
    equal budgets on one hardware, images per second on one hardware, else nothing."""
    if _shared_hardware(study, [a, b]) is None:
        return " (trained on different hardware: times not compared)"
    if same_budget(study, a, b):
        return (
            f", with {_time_change(study.costs(a)['training_time_seconds'], study.costs(b)['training_time_seconds'])}"
        )
    speed_a, speed_b = study.costs(a)["images_per_second"], study.costs(b)["images_per_second"]
    if not (math.isfinite(speed_a) and math.isfinite(speed_b)) or speed_b <= 0:
        return ""
    ratio = speed_a / speed_b
    change = (
        "about the same"
        if abs(ratio - 1) <= TIME_TOLERANCE
        else f"{abs(ratio - 1):.0%} {'more' if ratio > 1 else 'fewer'}"
    )
    return (
        f", training {change} images per second ({fmt.number(speed_a)} vs {fmt.number(speed_b)} on the same "
        "device; their budgets differ, so training times are not compared)"
    )


def timing_groups(study: Results) -> dict[tuple[Hardware, tuple[int, int] | None], list[Variant]]:
    """Trained variants that learnt, with a training time, by (hardware, (iterations, batch size)):
    training times are compared only within one group. A variant whose seeds trained on
    different hardware is in no group."""
    groups: dict[tuple[Hardware, tuple[int, int] | None], list[Variant]] = {}
    for variant in study.comparable:
        hardware = _shared_hardware(study, [variant])
        if hardware is not None and math.isfinite(study.costs(variant)["training_time_seconds"]):
            groups.setdefault((hardware, study.budget(variant)), []).append(variant)
    return groups


def mixed_hardware(study: Results) -> list[Variant]:
    """Trained variants whose seeds trained on different hardware."""
    return [v for v in study.variants if len(study.hardware(v)) > 1]


def hardware_note(study: Results, tests: PairedTests) -> list[Conclusion]:
    """Say so when the runs trained on different hardware: times are compared only within one."""
    by_hardware: dict[Hardware, list[Variant]] = {}
    for variant in study.variants:
        hardware = _shared_hardware(study, [variant])
        if hardware is not None and math.isfinite(study.costs(variant)["training_time_seconds"]):
            by_hardware.setdefault(hardware, []).append(variant)
    mixed = mixed_hardware(study)
    if len(by_hardware) + len(mixed) < 2:
        return []
    listing = "; ".join(
        f"{hardware.label}: {_join([v.label for v in variants])}" for hardware, variants in by_hardware.items()
    )
    text = f"The runs trained on different hardware ({listing})"
    if mixed:
        text += f"; the seeds of {_join([v.label for v in mixed])} trained on more than one"
    text += ". Training times are compared only between runs on the same device model with the same GPU count."
    return [Conclusion(HARDWARE_TOPIC, text)]


def budget_label(budget: tuple[int, int] | None) -> str:
    return "an unrecorded budget" if budget is None else f"{budget[0]:,} iterations of {budget[1]} images"


def training_speed(study: Results, tests: PairedTests) -> list[Conclusion]:
    """Images per second of training, compared between runs on the same hardware whatever their
    budgets (a run's training time is compared only with runs of its own budget: `fastest`)."""
    by_hardware: dict[Hardware, list[Variant]] = {}
    for variant in study.comparable:
        hardware = _shared_hardware(study, [variant])
        if hardware is not None and math.isfinite(study.costs(variant)["images_per_second"]):
            by_hardware.setdefault(hardware, []).append(variant)
    conclusions = []
    for hardware, variants in by_hardware.items():
        if len(variants) < 2:
            continue
        speeds = sorted(variants, key=lambda v: -study.costs(v)["images_per_second"])
        listing = ", ".join(f"{v.label} {fmt.number(study.costs(v)['images_per_second'])}" for v in speeds)
        text = f"Training images per second on {hardware.label}, fastest first: {listing}."
        conclusions.append(Conclusion(f"Training speed on {hardware.label}", text))
    return conclusions


def fastest(study: Results, tests: PairedTests) -> list[Conclusion]:
    """The shortest training time, only among runs with the same iterations and batch size on
    the same hardware (a short budget is never 'fastest')."""
    conclusions = []
    groups = {key: variants for key, variants in timing_groups(study).items() if key[1] is not None}
    for (hardware, budget), variants in groups.items():
        if len(variants) < 2:
            continue
        scope = f" among runs of {budget_label(budget)} on {hardware.label}"
        times = {v: study.costs(v)["training_time_seconds"] for v in variants}
        quickest = min(times, key=times.get)
        text = f"{quickest.label} trains fastest{scope} ({fmt.duration(times[quickest])})."
        close = [v.label for v, t in times.items() if v != quickest and t <= times[quickest] * (1 + TIME_TOLERANCE)]
        if close:
            text += f" Within {TIME_TOLERANCE:.0%} of that time: {', '.join(close)}."
        ref = study.reference
        if ref in times and quickest != ref:
            change = tests.difference(quickest, ref, study.overall_test_sets)
            text += f" Compared with the reference it takes {_time_change(times[quickest], times[ref])}"
            if change is None:
                text += "; its recall cannot be compared (per-query ranks missing)."
            elif change.significant:
                text += f" and {'gains' if change.value > 0 else 'loses'} overall R@1 ({change.describe()})."
            else:
                text += f", with no significant change in overall R@1 ({change.describe()})."
        conclusions.append(Conclusion(f"Fastest{scope}", text))
    return conclusions


def pareto_front(points: dict[Variant, tuple[float, float]]) -> list[Variant]:
    """Keys of `points` (recall, time) that no other point beats on both; fastest first."""
    finite = {v: p for v, p in points.items() if all(map(math.isfinite, p))}

    def dominated(recall: float, time: float) -> bool:
        return any(r >= recall and t <= time and (r, t) != (recall, time) for r, t in finite.values())

    front = [v for v, (recall, time) in finite.items() if not dominated(recall, time)]
    return sorted(front, key=lambda v: finite[v][1])


def pareto_set(study: Results, variants: list[Variant], test_sets: list[str]) -> list[Variant]:
    """The Pareto front of mean R@1 over `test_sets` vs training time among `variants`."""
    return pareto_front(
        {v: (mean_recall(study, v, test_sets), study.costs(v)["training_time_seconds"]) for v in variants}
    )


def pareto(study: Results, tests: PairedTests) -> list[Conclusion]:
    """Recall vs training time, within one hardware and one budget at a time."""
    conclusions = []
    groups = {key: variants for key, variants in timing_groups(study).items() if key[1] is not None}
    for (hardware, budget), variants in groups.items():
        front = pareto_set(study, variants, study.overall_test_sets)
        if len(variants) < 2 or not front:
            continue
        scope = f" among runs of {budget_label(budget)} on {hardware.label}" if len(groups) > 1 else ""
        members = ", ".join(
            f"{v.label} ({fmt.percent(mean_recall(study, v, study.overall_test_sets))}%, "
            f"{fmt.duration(study.costs(v)['training_time_seconds'])})"
            for v in front
        )
        text = (
            f"Pareto set of overall R@1 vs training time{scope} (point estimates, fastest first): {members}. "
            "Each other configuration is matched or beaten on both by one of these."
        )
        steps = []
        for faster, slower in zip(front, front[1:]):
            gain = tests.difference(slower, faster, study.overall_test_sets)
            verdict = (
                "untestable" if gain is None else gain.describe() + ("" if gain.significant else ", not significant")
            )
            steps.append(f"{faster.label} to {slower.label}: {verdict}")
        if steps:
            text += f" R@1 gained at each step along the front: {'; '.join(steps)}."
        conclusions.append(Conclusion(f"Recall vs training time{scope}", text))
    return conclusions


def reference_neighbours(study: Results) -> list[Variant]:
    """Variants that learnt and differ from the reference in one factor only."""
    ref = study.reference
    if ref is None:
        return []
    return [v for v in study.comparable if v != ref and sum(v.level(f) != ref.level(f) for f in study.factors) == 1]


def not_significant(study: Results, tests: PairedTests) -> list[Conclusion]:
    """Per test set: the variants one factor away from the reference whose R@1 the data cannot
    tell apart from the reference's."""
    ref = study.reference
    if ref is None or not study.learnt(ref):
        return []
    conclusions = []
    for test_set in study.test_sets:
        others = [v for v in reference_neighbours(study) if (c := study.cell(v, test_set)) and c.valid()]
        differences = {v: tests.difference(v, ref, [test_set]) for v in others}
        same = [f"{v.label} ({d.describe()})" for v, d in differences.items() if d and not d.significant]
        if not same:
            continue
        text = (
            f"On {study.test_set_label(test_set)}, R@1 of {'; '.join(same)} does not differ significantly "
            "from the reference (each differs from it in one factor)."
        )
        conclusions.append(Conclusion("Not significant", text))
    return conclusions


RULES: tuple[Rule, ...] = (
    data_coverage,
    training_gain,
    did_not_learn,
    best_backbone,
    factor_effects,
    hardware_note,
    training_speed,
    fastest,
    pareto,
    not_significant,
)


def _shared_hardware(study: Results, variants: list[Variant]) -> Hardware | None:
    """The one hardware every run of `variants` trained on, or None."""
    found = {hardware for v in variants for hardware in study.hardware(v)}
    return found.pop() if len(found) == 1 else None


def _device_types(study: Results, variants: list[Variant]) -> set[str]:
    runs = [run for v in variants for run in study.runs[v]]
    return set(study.table.loc[study.table["run"].isin(runs), "device_type"]) - {""}


def _join(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]


def _time_change(time: float, reference_time: float) -> str:
    """'38% less training time (2.5 h vs 4.0 h)', or 'about the same ...' within the tolerance."""
    if not (math.isfinite(time) and math.isfinite(reference_time)) or reference_time <= 0:
        return "an unknown training time (not recorded)"
    ratio = time / reference_time
    times = f"{fmt.duration(time)} vs {fmt.duration(reference_time)}"
    if abs(ratio - 1) <= TIME_TOLERANCE:
        return f"about the same training time ({times})"
    return f"{abs(ratio - 1):.0%} {'less' if ratio < 1 else 'more'} training time ({times})"
