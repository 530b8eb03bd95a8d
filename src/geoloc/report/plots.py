"""The report's figures, as inline SVG strings (matplotlib, Agg backend, text kept as text)."""

from __future__ import annotations

import io
import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.figure import Figure  # noqa: E402

from geoloc.report.conclusions import (  # noqa: E402
    context,
    matched_groups,
    mean_recall,
    mixed_hardware,
    pareto_front,
    timing_groups,
)
from geoloc.report.formatting import duration_unit  # noqa: E402
from geoloc.report.study import KS, Results, Variant, level_text  # noqa: E402

MARKERS = "osD^v<>pPX*h"
RUN_FACTORS_NOT_SWEPT = ("backbone", "pretraining", "precision", "tag")
PANELS_PER_ROW = 3
MIN_WIDTH_IN = 7.0  # a lone panel is drawn wide, its legend lists every run
PANEL_HEIGHT_IN = 2.4
BOTTOM_MARGIN_IN = 0.6  # tick labels and the x label, above the legend
TOP_MARGIN_IN = 0.3  # panel titles
STYLE = {
    "svg.fonttype": "none",  # real <text>: smaller, selectable, escaped by matplotlib
    "text.parse_math": False,  # a '$' in a run tag is text, not mathtext
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def variant_styles(study: Results) -> dict[Variant, dict[str, object]]:
    """One colour and marker per trained variant, the same in every figure; a baseline takes the
    colour of the first trained variant it belongs to, and a cross."""
    colors = plt.get_cmap("tab10" if len(study.variants) <= 10 else "tab20").colors
    styles: dict[Variant, dict[str, object]] = {
        v: {"color": colors[i % len(colors)], "marker": MARKERS[i % len(MARKERS)]} for i, v in enumerate(study.variants)
    }
    for baseline in study.baselines:
        owner = next((v for v in study.variants if study.baseline_of(v) == baseline), None)
        styles[baseline] = {"color": styles[owner]["color"] if owner else "0.5", "marker": "x"}
    return styles


def recall_vs_time(study: Results) -> str | None:
    """R@1 vs training time per test set (and overall), Pareto front drawn as a step line when
    every run learnt and trained on the same hardware with the same iterations and batch size;
    each baseline as a dotted line at its R@1."""
    times = {v: study.costs(v)["training_time_seconds"] for v in study.variants}
    if not any(map(math.isfinite, times.values())):
        return None
    unit, scale = duration_unit(list(times.values()))
    groups = timing_groups(study)
    # The front compares times: drawn only when every run learnt and trained on the same hardware
    # with the same budget (iterations and batch size).
    one_group = len(groups) == 1 and not mixed_hardware(study) and len(study.comparable) == len(study.variants)
    comparable = next(iter(groups.values())) if one_group and next(iter(groups))[1] is not None else []
    return _recall_against(study, times, comparable, f"training time ({unit})", scale, "recall_vs_time")


def recall_vs_memory(study: Results) -> str | None:
    """R@1 vs database memory per million images (float32 descriptors), per test set and overall:
    each aggregator's descriptor size against what it finds."""
    memory = {v: study.costs(v)["memory_mb_per_million"] for v in study.variants}
    if not any(map(math.isfinite, memory.values())):
        return None
    return _recall_against(
        study, memory, list(study.comparable), "database memory per million images (MB)", 1.0, "recall_vs_memory"
    )


def _recall_against(
    study: Results, costs: dict[Variant, float], front_of: list[Variant], xlabel: str, scale: float, name: str
) -> str:
    """R@1 of each variant against a cost, one panel per test set and overall; the Pareto front of
    `front_of` as a step line, each baseline as a dotted line at its R@1."""
    panels = [(study.test_set_label(t), [t]) for t in study.test_sets]
    if len(study.overall_test_sets) > 1:
        sets = study.overall_test_sets
        panels.append((f"Overall ({', '.join(map(study.test_set_label, sets))})", sets))
    styles = variant_styles(study)
    with matplotlib.rc_context(STYLE):
        fig, axes = _panels(len(panels))
        for ax, (title, test_sets) in zip(axes, panels):
            points = {v: (mean_recall(study, v, test_sets), costs[v]) for v in study.variants}
            for v, (recall, cost) in points.items():
                if math.isfinite(recall) and math.isfinite(cost):
                    ax.plot(cost / scale, recall, linestyle="none", label=plot_label(study, v), **styles[v])
            for baseline in study.baselines:
                recall = mean_recall(study, baseline, test_sets)
                if math.isfinite(recall):
                    ax.axhline(
                        recall, color=styles[baseline]["color"], linestyle=":", linewidth=1, label=baseline.label
                    )
            front = pareto_front({v: points[v] for v in front_of})
            if len(front) > 1:
                xs = [points[v][1] / scale for v in front]
                ys = [points[v][0] for v in front]
                ax.step(xs, ys, where="post", color="0.4", linestyle="--", linewidth=1, zorder=0, label="Pareto front")
            ax.set(title=title, xlabel=xlabel, ylabel="R@1 (%)")
        return _svg(fig, name)


def plot_label(study: Results, variant: Variant) -> str:
    """A variant's legend entry, marked when it did not learn."""
    return variant.label if study.learnt(variant) else f"{variant.label} (did not learn)"


def sweep_plots(study: Results) -> dict[str, str]:
    """Per swept numeric training setting: overall R@1 against its value, one line per group of
    matched runs (named by what they hold equal, e.g. the backbone); configurations that did not
    learn are left out."""
    figures = {}
    sets = study.overall_test_sets
    for factor in study.factors:
        if factor in RUN_FACTORS_NOT_SWEPT:
            continue
        groups = [
            g
            for g in matched_groups(study, factor, study.comparable)
            if all(isinstance(v.level(factor), (int, float)) and not isinstance(v.level(factor), bool) for v in g)
        ]
        if not groups:
            continue
        with matplotlib.rc_context(STYLE):
            fig, [ax] = _panels(1)
            for i, group in enumerate(groups):
                points = sorted((v.level(factor), mean_recall(study, v, sets)) for v in group)
                label = context(study, factor, group) or "all runs"
                ax.plot(*zip(*points), marker=MARKERS[i % len(MARKERS)], label=label)
            values = sorted({v.level(factor) for g in groups for v in g})
            if values[0] > 0 and values[-1] / values[0] >= 10:
                ax.set_xscale("log")
            ax.set_xticks(values, [level_text(factor, value) for value in values])
            ax.minorticks_off()
            overall = ", ".join(map(study.test_set_label, sets))
            ax.set(title=f"R@1 against {factor}", xlabel=factor, ylabel=f"overall R@1 (%) ({overall})")
            figures[factor] = _svg(fig, f"sweep_{factor}")
    return figures


def recall_curves(study: Results) -> str | None:
    """Recall@k against k, one panel per test set; baselines dashed."""
    if not study.test_sets:
        return None
    styles = variant_styles(study)
    with matplotlib.rc_context(STYLE):
        fig, axes = _panels(len(study.test_sets))
        for ax, test_set in zip(axes, study.test_sets):
            for v in study.table_order():
                cell = study.cell(v, test_set)
                if cell is not None:
                    line = "--" if v.is_baseline else "-"
                    ax.plot(KS, [cell.recalls[k] for k in KS], label=v.label, linestyle=line, **styles[v])
            ax.set(title=study.test_set_label(test_set), xlabel="k (database images retrieved)", ylabel="recall@k (%)")
            ax.set_xticks(KS)
        return _svg(fig, "recall_curves")


def validation_curves(study: Results) -> str | None:
    """Validation R@1 after each epoch of each run (from train.json)."""
    styles = variant_styles(study)
    with matplotlib.rc_context(STYLE):
        fig, [ax] = _panels(1)
        drawn = False
        for v, runs in study.runs.items():
            for run in runs:
                epochs = study.train_logs.get(run, {}).get("epochs") or []
                points = [(e["epoch"], e["val_recalls"]["r1"]) for e in epochs if e.get("val_recalls")]
                if points:
                    ax.plot(*zip(*points), label=run, color=styles[v]["color"], marker=styles[v]["marker"])
                    drawn = True
        if not drawn:
            plt.close(fig)
            return None
        ax.set(title="Validation during training", xlabel="epoch", ylabel="validation R@1 (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        return _svg(fig, "validation_curves")


def _panels(count: int) -> tuple[Figure, list[plt.Axes]]:
    columns = min(count, PANELS_PER_ROW)
    rows = math.ceil(count / columns)
    height = PANEL_HEIGHT_IN * rows + BOTTOM_MARGIN_IN + TOP_MARGIN_IN
    fig, axes = plt.subplots(rows, columns, figsize=(max(3.4 * columns + 0.6, MIN_WIDTH_IN), height), squeeze=False)
    # Fixed margins instead of a layout engine (3x faster); the tight bounding box at save
    # time trims the outer margins and makes room for the legend below.
    fig.subplots_adjust(wspace=0.3, hspace=0.45, bottom=BOTTOM_MARGIN_IN / height, top=1 - TOP_MARGIN_IN / height)
    flat = list(axes.flat)
    for unused in flat[count:]:
        unused.remove()
    return fig, flat[:count]


def _svg(fig: Figure, name: str) -> str:
    """The figure as an <svg> element ready to inline (no XML prolog, no metadata)."""
    handles, labels = fig.axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in fig.axes[1:]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(
        seen.values(),
        seen.keys(),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncols=min(2, len(seen)),
        frameon=False,
    )
    buffer = io.StringIO()
    # A per-figure salt keeps generated element ids unique across the figures of one page.
    with matplotlib.rc_context({"svg.hashsalt": name}):
        fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    return text.replace("<svg ", f'<svg role="img" aria-label="{name.replace("_", " ")}" ', 1)
