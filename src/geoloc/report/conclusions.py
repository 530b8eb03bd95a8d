"""The study's conclusions, written from the numbers by fixed rules.

Recall is compared on R@1, paired over queries (`bootstrap.recall_samples`). Every difference
the rules test is one hypothesis of one family, corrected together (Holm-Bonferroni on the
bootstrap p-values, `PairedTests`): a difference is claimed only when its adjusted p-value is
below 0.05; otherwise the sentence says the data cannot tell the two apart. "Overall" is the
mean R@1 of the test sets whose queries are distinct (`Study.overall_test_sets`). Training times
are compared only between runs on the same hardware (device model, GPU and process count).
Untrained baselines are only ever what training is measured against, never a candidate.
A run with no or NaN recall is left out of a comparison and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from geoloc.report import formatting as fmt
from geoloc.report.bootstrap import holm, interval, p_value
from geoloc.report.labels import SUBSET_OF, backbone_label, precision_label, test_set_label
from geoloc.report.study import Hardware, Study, Variant

# Wall-clock times of identical jobs vary by a few percent, so smaller gaps are "the same time".
TIME_TOLERANCE = 0.10
ALPHA = 0.05  # family-wise error rate of the report's claims
NO_CONCLUSION = "No conclusion can be drawn from the results present."
HARDWARE_TOPIC = "Hardware"


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

    def __init__(self, study: Study) -> None:
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
        return [(a, b, test_sets, self.difference(a, b, list(test_sets)))
                for (a, b, test_sets), result in self._tested.items() if result is not None]

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


Rule = Callable[[Study, PairedTests], list[Conclusion]]


def derive_conclusions(study: Study, tests: PairedTests | None = None) -> list[Conclusion]:
    """All conclusions, in the order the report lists them."""
    if tests is None:
        tests = paired_tests(study)
    return [conclusion for rule in RULES for conclusion in rule(study, tests)]


def paired_tests(study: Study) -> PairedTests:
    """The family of every difference the rules test, Holm-corrected."""
    tests = PairedTests(study)
    for rule in RULES:
        rule(study, tests)  # a first pass only to learn which differences the rules test
    tests.correct()
    return tests


def overall_description(study: Study) -> str:
    """How the overall score is formed, in words."""
    sets = study.overall_test_sets
    text = f"the mean of R@1 on {_join(list(map(test_set_label, sets)))}" + (
        ", each test set weighted equally" if len(sets) > 1 else ""
    )
    left_out = [t for t in study.test_sets if t not in sets]
    for test_set in left_out:
        superset = test_set_label(SUBSET_OF[test_set])
        text += (
            f"; {test_set_label(test_set)} is reported on its own and not counted again, "
            f"since its queries are a subset of {superset}'s"
        )
    return text


def mean_recall(study: Study, variant: Variant, test_sets: list[str], k: int = 1) -> float:
    """Mean recall@k over `test_sets`; NaN when any of them has no valid value."""
    values = [study.recall(variant, test_set, k) for test_set in test_sets]
    return float(np.mean(values)) if values and all(map(math.isfinite, values)) else math.nan


def rank(
    study: Study,
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


def data_coverage(study: Study, tests: PairedTests) -> list[Conclusion]:
    """Say what the conclusions are missing: runs without results, NaN recalls, a lone run."""
    notes = []
    if study.missing_runs:
        notes.append(
            f"{len(study.missing_runs)} expected run(s) have no results and are left out: "
            f"{', '.join(study.missing_runs)}."
        )
    if study.reference is None:
        notes.append(f"The reference run {study.reference_run} has no results: comparisons with it are skipped.")
    invalid = [
        f"{variant.label} on {test_set_label(test_set)}"
        for (variant, test_set), cell in study.cells.items()
        if not cell.valid()
    ]
    if invalid:
        notes.append(f"No valid R@1 (NaN) for {', '.join(invalid)}: left out of those comparisons.")
    if len(study.variants) == 1:
        only = study.variants[0]
        notes.append(f"Only one configuration has results ({only.label}): there is nothing to compare it with.")
    return [Conclusion("Data", note) for note in notes]


def training_gain(study: Study, tests: PairedTests) -> list[Conclusion]:
    """Per test set: each trained variant against the untrained network it started from."""
    conclusions = []
    for test_set in study.test_sets:
        pairs = [
            (v, baseline)
            for v in study.variants
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
        conclusions.append(Conclusion(f"Gain over the untrained baseline on {test_set_label(test_set)}", text))
    return conclusions


def best_pretraining(study: Study, tests: PairedTests) -> list[Conclusion]:
    """Among variants that differ from the reference only in pretraining."""
    ref = study.reference
    if ref is None:
        return []
    candidates = [v for v in study.variants if _same_except(v, ref, "pretraining")]
    scope = f" for {backbone_label(ref.backbone)} ({precision_label(ref.precision)})"
    conclusion = rank(
        study, tests, candidates, study.overall_test_sets, f"Best pretraining{scope}", "pretraining", scope
    )
    return [conclusion] if conclusion else []


def backbone_candidates(study: Study) -> list[Variant]:
    """Backbones are compared with the reference's pretraining (all variants without one)."""
    if study.reference is None:
        return list(study.variants)
    return [v for v in study.variants if v.pretraining == study.reference.pretraining]


def best_overall(study: Study, tests: PairedTests) -> list[Conclusion]:
    scope = f" overall (mean R@1 over {', '.join(map(test_set_label, study.overall_test_sets))})"
    conclusion = rank(
        study, tests, backbone_candidates(study), study.overall_test_sets, "Best backbone overall", "backbone", scope
    )
    return [conclusion] if conclusion else []


def best_per_test_set(study: Study, tests: PairedTests) -> list[Conclusion]:
    conclusions = []
    for test_set in study.test_sets:
        label = test_set_label(test_set)
        found = rank(
            study,
            tests,
            backbone_candidates(study),
            [test_set],
            f"Best backbone on {label}",
            "backbone",
            f" on {label}",
        )
        conclusions += [found] if found else []
    return conclusions


def amp_effect(study: Study, tests: PairedTests) -> list[Conclusion]:
    """The reference against its twin that differs only in precision (fp32 vs AMP)."""
    ref = study.reference
    twins = [v for v in study.variants if ref and _same_except(v, ref, "precision") and v != ref]
    if not twins:
        return []
    twin = twins[0]
    text = (
        f"Training the reference {backbone_label(ref.backbone)} with {precision_label(twin.precision)} "
        f"instead of {precision_label(ref.precision)} {_device_phrase(study, [ref, twin])}"
    )
    shared = _shared_hardware(study, [ref, twin])
    if shared is None:
        text += (
            f" ran on different hardware ({_hardware_labels(study, ref)} vs {_hardware_labels(study, twin)}), "
            "so its training times are not compared"
        )
    else:
        twin_time = study.costs(twin)["training_time_seconds"]
        text += f" takes {_time_change(twin_time, study.costs(ref)['training_time_seconds'])}"
    change = tests.difference(twin, ref, study.overall_test_sets)
    if change is None:
        text += "; its effect on recall cannot be tested (per-query ranks missing)."
    elif change.significant:
        text += f" and {'raises' if change.value > 0 else 'lowers'} overall R@1 ({change.describe()})."
    else:
        text += f"; its effect on overall R@1 is not significant ({change.describe()})."
    if _device_types(study, [ref, twin]) == {"cpu"}:
        text += (
            " On a CPU, AMP is bfloat16 autocast: its speed depends on the processor's bf16 support, "
            "and fp16 AMP on a GPU behaves differently."
        )
    return [Conclusion(f"Effect of {precision_label(twin.precision)}", text)]


def timing_groups(study: Study) -> dict[Hardware, list[Variant]]:
    """Trained variants with a training time, by the hardware all their runs trained on.

    Only variants in one group are compared on time; a variant whose seeds trained on different
    hardware is in no group.
    """
    groups: dict[Hardware, list[Variant]] = {}
    for variant in study.variants:
        hardware = _shared_hardware(study, [variant])
        if hardware is not None and math.isfinite(study.costs(variant)["training_time_seconds"]):
            groups.setdefault(hardware, []).append(variant)
    return groups


def mixed_hardware(study: Study) -> list[Variant]:
    """Trained variants whose seeds trained on different hardware."""
    return [v for v in study.variants if len(study.hardware(v)) > 1]


def hardware_note(study: Study, tests: PairedTests) -> list[Conclusion]:
    """Say so when the runs trained on different hardware: times are compared only within one."""
    groups = timing_groups(study)
    mixed = mixed_hardware(study)
    if len(groups) + len(mixed) < 2:
        return []
    listing = "; ".join(
        f"{hardware.label}: {_join([v.label for v in variants])}" for hardware, variants in groups.items()
    )
    text = f"The runs trained on different hardware ({listing})"
    if mixed:
        text += f"; the seeds of {_join([v.label for v in mixed])} trained on more than one"
    text += ". Training times are compared only between runs on the same device model with the same GPU count."
    return [Conclusion(HARDWARE_TOPIC, text)]


def fastest(study: Study, tests: PairedTests) -> list[Conclusion]:
    conclusions = []
    groups = timing_groups(study)
    for hardware, variants in groups.items():
        if len(variants) < 2:
            continue
        scope = f" on {hardware.label}" if len(groups) > 1 else ""
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


def pareto_set(study: Study, variants: list[Variant], test_sets: list[str]) -> list[Variant]:
    """The Pareto front of mean R@1 over `test_sets` vs training time among `variants`."""
    return pareto_front(
        {v: (mean_recall(study, v, test_sets), study.costs(v)["training_time_seconds"]) for v in variants}
    )


def pareto(study: Study, tests: PairedTests) -> list[Conclusion]:
    conclusions = []
    groups = timing_groups(study)
    for hardware, variants in groups.items():
        front = pareto_set(study, variants, study.overall_test_sets)
        if len(variants) < 2 or not front:
            continue
        scope = f" on {hardware.label}" if len(groups) > 1 else ""
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


def not_significant(study: Study, tests: PairedTests) -> list[Conclusion]:
    """Per test set: the variants whose R@1 the data cannot tell apart from the reference's."""
    ref = study.reference
    if ref is None:
        return []
    conclusions = []
    for test_set in study.test_sets:
        others = [v for v in study.variants if v != ref and (c := study.cell(v, test_set)) and c.valid()]
        differences = {v: tests.difference(v, ref, [test_set]) for v in others}
        same = [f"{v.label} ({d.describe()})" for v, d in differences.items() if d and not d.significant]
        if not same:
            continue
        text = (
            f"On {test_set_label(test_set)}, R@1 of {'; '.join(same)} does not differ significantly "
            "from the reference."
        )
        conclusions.append(Conclusion("Not significant", text))
    return conclusions


RULES: tuple[Rule, ...] = (
    data_coverage,
    training_gain,
    best_pretraining,
    best_overall,
    best_per_test_set,
    amp_effect,
    hardware_note,
    fastest,
    pareto,
    not_significant,
)


def _same_except(variant: Variant, other: Variant, attribute: str) -> bool:
    fields = ("backbone", "pretraining", "precision", "tag", "kind")
    return all(getattr(variant, f) == getattr(other, f) for f in fields if f != attribute)


def _shared_hardware(study: Study, variants: list[Variant]) -> Hardware | None:
    """The one hardware every run of `variants` trained on, or None."""
    found = {hardware for v in variants for hardware in study.hardware(v)}
    return found.pop() if len(found) == 1 else None


def _hardware_labels(study: Study, variant: Variant) -> str:
    return " and ".join(h.label for h in study.hardware(variant))


def _device_types(study: Study, variants: list[Variant]) -> set[str]:
    runs = [run for v in variants for run in study.runs[v]]
    return set(study.table.loc[study.table["run"].isin(runs), "device_type"]) - {""}


def _device_phrase(study: Study, variants: list[Variant]) -> str:
    """Where the runs trained: 'on a GPU (NVIDIA H200)', 'on a CPU', or what is known of it."""
    device_types = _device_types(study, variants)
    if not device_types:
        return "on an unrecorded device type"
    if device_types == {"cuda"}:
        return f"on a GPU ({_join(sorted({h.device for v in variants for h in study.hardware(v)}))})"
    if device_types == {"cpu"}:
        return "on a CPU"
    return f"on {' and '.join(sorted(device_types))}"


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
