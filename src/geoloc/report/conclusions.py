"""The study's conclusions, written from the numbers by fixed rules.

Recall is compared on R@1. A difference is claimed only when the 95% bootstrap interval of
that difference excludes zero (paired over queries, `bootstrap.recall_samples`); otherwise the
sentence says the data cannot tell the two apart. Comparisons "overall" average R@1 over all
test sets. A run with no or NaN recall is left out of a comparison and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from geoloc.report import formatting as fmt
from geoloc.report.bootstrap import interval
from geoloc.report.labels import backbone_label, precision_label, test_set_label
from geoloc.report.study import Study, Variant

# Wall-clock times of identical jobs vary by a few percent, so smaller gaps are "the same time".
TIME_TOLERANCE = 0.10


@dataclass(frozen=True)
class Conclusion:
    topic: str
    text: str
    winner: Variant | None = None  # set only when the intervals support naming a best


@dataclass(frozen=True)
class Difference:
    """R@1 of a minus R@1 of b in points, with its 95% bootstrap interval."""

    value: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def describe(self) -> str:
        return f"{fmt.signed(self.value)} points, 95% CI {fmt.interval(self.low, self.high)}"


def derive_conclusions(study: Study) -> list[Conclusion]:
    """All conclusions, in the order the report lists them."""
    rules: list[Callable[[Study], list[Conclusion]]] = [
        data_coverage,
        best_pretraining,
        best_overall,
        best_per_test_set,
        amp_effect,
        fastest,
        pareto,
        not_significant,
    ]
    return [conclusion for rule in rules for conclusion in rule(study)]


def mean_recall(study: Study, variant: Variant, test_sets: list[str], k: int = 1) -> float:
    """Mean recall@k over `test_sets`; NaN when any of them has no valid value."""
    values = [study.recall(variant, test_set, k) for test_set in test_sets]
    return float(np.mean(values)) if values and all(map(math.isfinite, values)) else math.nan


def difference(study: Study, a: Variant, b: Variant, test_sets: list[str], k: int = 1) -> Difference | None:
    """Mean recall@k of a minus b over `test_sets`, or None when it cannot be tested."""
    samples = []
    for test_set in test_sets:
        sample_a, sample_b = study.recall_samples(a, test_set, k), study.recall_samples(b, test_set, k)
        if sample_a is None or sample_b is None:
            return None
        samples.append(sample_a - sample_b)
    low, high = interval(np.mean(samples, axis=0))
    value = mean_recall(study, a, test_sets, k) - mean_recall(study, b, test_sets, k)
    return Difference(value, low, high)


def rank(
    study: Study, candidates: list[Variant], test_sets: list[str], topic: str, what: str, scope: str
) -> Conclusion | None:
    """Name the best candidate by mean R@1 over `test_sets`, only if it beats every other one.

    `what` and `scope` make the sentence: "X is the best {what}{scope}".
    """
    scored = [(mean_recall(study, v, test_sets), v) for v in candidates]
    scored = sorted((item for item in scored if math.isfinite(item[0])), key=lambda item: -item[0])
    if len(scored) < 2:
        return None
    (best_value, best), others = scored[0], [variant for _, variant in scored[1:]]
    differences = {other: difference(study, best, other, test_sets) for other in others}
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


def data_coverage(study: Study) -> list[Conclusion]:
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


def best_pretraining(study: Study) -> list[Conclusion]:
    """Among variants that differ from the reference only in pretraining."""
    ref = study.reference
    if ref is None:
        return []
    candidates = [v for v in study.variants if _same_except(v, ref, "pretraining")]
    scope = f" for {backbone_label(ref.backbone)} ({precision_label(ref.precision)})"
    conclusion = rank(study, candidates, study.test_sets, f"Best pretraining{scope}", "pretraining", scope)
    return [conclusion] if conclusion else []


def backbone_candidates(study: Study) -> list[Variant]:
    """Backbones are compared with the reference's pretraining (all variants without one)."""
    if study.reference is None:
        return list(study.variants)
    return [v for v in study.variants if v.pretraining == study.reference.pretraining]


def best_overall(study: Study) -> list[Conclusion]:
    scope = f" overall (mean R@1 over {', '.join(map(test_set_label, study.test_sets))})"
    conclusion = rank(study, backbone_candidates(study), study.test_sets, "Best backbone overall", "backbone", scope)
    return [conclusion] if conclusion else []


def best_per_test_set(study: Study) -> list[Conclusion]:
    conclusions = []
    for test_set in study.test_sets:
        label = test_set_label(test_set)
        found = rank(
            study, backbone_candidates(study), [test_set], f"Best backbone on {label}", "backbone", f" on {label}"
        )
        conclusions += [found] if found else []
    return conclusions


def amp_effect(study: Study) -> list[Conclusion]:
    """The reference against its twin that differs only in precision (fp32 vs AMP)."""
    ref = study.reference
    twins = [v for v in study.variants if ref and _same_except(v, ref, "precision") and v != ref]
    if not twins:
        return []
    twin = twins[0]
    ref_time = study.costs(ref)["training_time_seconds"]
    twin_time = study.costs(twin)["training_time_seconds"]
    text = (
        f"Training the reference {backbone_label(ref.backbone)} with {precision_label(twin.precision)} "
        f"instead of {precision_label(ref.precision)} takes {_time_change(twin_time, ref_time)}"
    )
    change = difference(study, twin, ref, study.test_sets)
    if change is None:
        text += "; its effect on recall cannot be tested (per-query ranks missing)."
    elif change.significant:
        text += f" and {'raises' if change.value > 0 else 'lowers'} mean R@1 ({change.describe()})."
    else:
        text += f"; its effect on mean R@1 is not significant ({change.describe()})."
    return [Conclusion(f"Effect of {precision_label(twin.precision)}", text)]


def fastest(study: Study) -> list[Conclusion]:
    times = {v: study.costs(v)["training_time_seconds"] for v in study.variants}
    times = {v: t for v, t in times.items() if math.isfinite(t)}
    if len(times) < 2:
        return []
    quickest = min(times, key=times.get)
    text = f"{quickest.label} trains fastest ({fmt.duration(times[quickest])})."
    close = [v.label for v, t in times.items() if v != quickest and t <= times[quickest] * (1 + TIME_TOLERANCE)]
    if close:
        text += f" Within {TIME_TOLERANCE:.0%} of that time: {', '.join(close)}."
    ref = study.reference
    if ref is not None and quickest != ref:
        change = difference(study, quickest, ref, study.test_sets)
        text += f" Compared with the reference it takes {_time_change(times[quickest], times.get(ref, math.nan))}"
        if change is None:
            text += "; its recall cannot be compared (per-query ranks missing)."
        elif change.significant:
            text += f" and {'gains' if change.value > 0 else 'loses'} mean R@1 ({change.describe()})."
        else:
            text += f", with no significant change in mean R@1 ({change.describe()})."
    return [Conclusion("Fastest", text)]


def pareto_front(points: dict[Variant, tuple[float, float]]) -> list[Variant]:
    """Keys of `points` (recall, time) that no other point beats on both; fastest first."""
    finite = {v: p for v, p in points.items() if all(map(math.isfinite, p))}

    def dominated(recall: float, time: float) -> bool:
        return any(r >= recall and t <= time and (r, t) != (recall, time) for r, t in finite.values())

    front = [v for v, (recall, time) in finite.items() if not dominated(recall, time)]
    return sorted(front, key=lambda v: finite[v][1])


def pareto_set(study: Study) -> list[Variant]:
    """The Pareto front of mean R@1 over all test sets vs training time."""
    return pareto_front(
        {v: (mean_recall(study, v, study.test_sets), study.costs(v)["training_time_seconds"]) for v in study.variants}
    )


def pareto(study: Study) -> list[Conclusion]:
    front = pareto_set(study)
    if len(study.variants) < 2 or not front:
        return []
    members = ", ".join(
        f"{v.label} ({fmt.percent(mean_recall(study, v, study.test_sets))}%, "
        f"{fmt.duration(study.costs(v)['training_time_seconds'])})"
        for v in front
    )
    text = (
        f"Pareto set of mean R@1 vs training time (point estimates, fastest first): {members}. "
        "Each other configuration is matched or beaten on both by one of these."
    )
    steps = []
    for faster, slower in zip(front, front[1:]):
        gain = difference(study, slower, faster, study.test_sets)
        verdict = "untestable" if gain is None else gain.describe() + ("" if gain.significant else ", not significant")
        steps.append(f"{faster.label} to {slower.label}: {verdict}")
    if steps:
        text += f" R@1 gained at each step along the front: {'; '.join(steps)}."
    return [Conclusion("Recall vs training time", text)]


def not_significant(study: Study) -> list[Conclusion]:
    """Per test set: the variants whose R@1 the data cannot tell apart from the reference's."""
    ref = study.reference
    if ref is None:
        return []
    conclusions = []
    for test_set in study.test_sets:
        others = [v for v in study.variants if v != ref and (c := study.cell(v, test_set)) and c.valid()]
        differences = {v: difference(study, v, ref, [test_set]) for v in others}
        same = [f"{v.label} ({d.describe()})" for v, d in differences.items() if d and not d.significant]
        if not same:
            continue
        text = (
            f"On {test_set_label(test_set)}, R@1 of {'; '.join(same)} does not differ significantly "
            "from the reference: the 95% CI of each difference includes zero."
        )
        conclusions.append(Conclusion("Not significant", text))
    return conclusions


def _same_except(variant: Variant, other: Variant, attribute: str) -> bool:
    fields = ("backbone", "pretraining", "precision", "tag")
    return all(getattr(variant, f) == getattr(other, f) for f in fields if f != attribute)


def _time_change(time: float, reference_time: float) -> str:
    """'38% less training time (2.5 h vs 4.0 h)', or 'about the same ...' within the tolerance."""
    if not (math.isfinite(time) and math.isfinite(reference_time)) or reference_time <= 0:
        return "an unknown training time (not recorded)"
    ratio = time / reference_time
    times = f"{fmt.duration(time)} vs {fmt.duration(reference_time)}"
    if abs(ratio - 1) <= TIME_TOLERANCE:
        return f"about the same training time ({times})"
    return f"{abs(ratio - 1):.0%} {'less' if ratio < 1 else 'more'} training time ({times})"
