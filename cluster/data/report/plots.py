"""The matplotlib figures every kind shares (accuracy, score distributions, margins, per-subset boxes),
histograms on fitted ranges, and figures rendered to PNG."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cluster.data.metrics import RM_BENCH_LEVELS, column_values, list_values, margin_meaning, number, subset_labels
from cluster.data.report.kinds import score_axis_label
from cluster.kinds import report_text, unit_of

HISTOGRAM_BINS = 40
FIGURE_DPI = 100
CHANCE = 50.0  # accuracy (%) of a coin flip on every comparison
GROUP_COLORS = {"overall": "tab:gray", "RewardBench": "tab:purple", "RM-Bench": "tab:green", "subset": "tab:blue"}


@dataclass
class Plot:
    caption: str  # plain text; escaped when rendered
    figure: Figure  # rendered to an inline PNG when the page is written


class AxisRange(NamedTuple):
    low: float
    high: float
    marker_shown: bool  # the reference line (0 margin, P = 0.5) is inside the range
    degenerate: bool  # all values (nearly) equal: the range is padded around them


def pair_plots(scored: pa.Table, summary: dict, label: str | None = None, aggregate: str | None = None) -> list[Plot]:
    kind = summary["kind"]
    return [
        accuracy_plot([(label or "model", summary)]),
        score_distribution_plot(scored, kind, label, aggregate),
        margin_plot(scored, kind, label),
    ]


def score_plots(
    scored: pa.Table, label: str | None = None, kind: str = "reward", aggregate: str | None = None
) -> list[Plot]:
    scores = column_values(scored, "score") if "score" in scored.column_names else np.array([])
    figure, axes = new_figure()
    draw_histogram(axes, {"score": scores})
    axis = score_axis_label(kind, aggregate)
    axes.set_xlabel(axis)
    what = report_text(kind).scores
    set_title(axes, label, what)
    plots = [
        Plot(
            f"{what[0].upper()}{what[1:]} distribution ({count_finite(scores)} rows); the axis is fitted to the "
            "scores.",
            figure,
        )
    ]
    labels = subset_labels(scored)
    if labels is not None:
        plots.append(subset_boxplot(scores, labels, axis))
    return plots


def accuracy_entries(summary: dict) -> list[tuple[str, str, float | None, list[float] | None]]:
    """(group, name, accuracy, interval) for every accuracy the summary holds, in display order."""
    entries = [("overall", "all rows", summary.get("accuracy"), summary.get("accuracy_ci"))]
    intervals = summary.get("rewardbench_ci") or {}
    entries += [
        ("RewardBench", section, value, intervals.get(section))
        for section, value in (summary.get("rewardbench") or {}).items()
    ]
    if "rm_bench" in summary:
        rm_bench = summary["rm_bench"]
        entries += [
            ("RM-Bench", level, rm_bench[level], (rm_bench.get("ci") or {}).get(level)) for level in RM_BENCH_LEVELS
        ]
    entries += [
        ("subset", name, entry["accuracy"], entry.get("ci"))
        for name, entry in (summary.get("per_subset") or {}).items()
    ]
    return entries


def entry_label(group: str, name: str) -> str:
    return name if group in ("overall", "subset") else f"{group} {name}"


def accuracy_plot(series: list[tuple[str, dict]]) -> Plot:
    """Accuracies with their bootstrap intervals as error bars and the 50% chance line: one bar per
    accuracy for one model, grouped bars (one per model) for several."""
    categories: list[tuple[str, str]] = []
    values: list[dict] = []
    for _, summary in series:
        entries = {(group, name): (value, interval) for group, name, value, interval in accuracy_entries(summary)}
        categories += [key for key in entries if key not in categories]
        values.append(entries)
    models = len(series)
    figure, axes = new_figure(height=max(2.5, len(categories) * (0.2 + 0.16 * models) + 1.3))
    positions = np.arange(len(categories))
    bar = 0.8 / models
    for index, ((label, _), entries) in enumerate(zip(series, values)):
        accuracy = np.array([100 * (entries.get(key, (None, None))[0] or 0.0) for key in categories])
        low, high = [], []
        for key, value in zip(categories, accuracy):
            interval = entries.get(key, (None, None))[1]
            low.append(value - 100 * interval[0] if interval else 0.0)
            high.append(100 * interval[1] - value if interval else 0.0)
        errors = np.clip(np.array([low, high]), 0.0, None)  # float noise must not make a bar negative
        colors = [GROUP_COLORS[group] for group, _ in categories] if models == 1 else f"C{index}"
        axes.barh(
            positions - 0.4 + bar * (index + 0.5),
            accuracy,
            height=bar,
            xerr=errors,
            color=colors,
            error_kw={"ecolor": "black", "elinewidth": 0.8, "capsize": 2},
            label=matplotlib_safe(label) if models > 1 else None,
        )
    for position, key in zip(positions, categories):
        if all(entries.get(key, (None, None))[0] is None for entries in values):
            axes.text(1, position, "no scored rows", va="center", fontsize="small", color="#555")
    axes.axvline(CHANCE, color="tab:red", linestyle="--", linewidth=1, label=f"chance ({CHANCE:.0f}%)")
    axes.set_yticks(positions, [matplotlib_safe(entry_label(group, name)) for group, name in categories])
    axes.set_ylim(len(categories) - 0.5, -0.5)  # as in the tables: overall first, at the top
    axes.set_xlim(0, 100)
    axes.set_xlabel("accuracy (%); error bars: 95% bootstrap interval")
    figure.legend(fontsize="small", loc="outside upper center", ncols=min(models + 1, 5))
    who = "" if models == 1 else f" of {models} models"
    caption = (
        f"Accuracy{who}: overall, benchmark sections and per subset, with 95% bootstrap intervals "
        f"(rows resampled); the dashed line is chance ({CHANCE:.0f}%)."
    )
    return Plot(caption, figure)


def score_distribution_plot(
    scored: pa.Table, kind: str, label: str | None = None, aggregate: str | None = None
) -> Plot:
    """Chosen vs rejected reward scores, overlaid; for a critic, its P(chosen wins) instead."""
    figure, axes = new_figure()
    probs = values_of_either(scored, "prob_chosen", "probs_chosen")
    if unit_of(kind) == "pair" or probs is not None:
        probs = probs if probs is not None else np.array([])
        fitted = draw_histogram(axes, {"P(chosen wins)": probs}, marker=0.5)
        axes.set_xlabel("critic P(chosen wins)")
        set_title(axes, label, "critic verdicts")
        caption = (
            f"Critic verdicts: P(chosen wins) over {count_finite(probs)} comparisons "
            "(every chosen x rejected comparison for multi-response rows)." + range_note(probs, fitted, 0.5, "P = 0.5")
        )
        return Plot(caption, figure)
    chosen = values_of_either(scored, "chosen_score", "chosen_scores")
    rejected = values_of_either(scored, "rejected_score", "rejected_scores")
    chosen = chosen if chosen is not None else np.array([])
    rejected = rejected if rejected is not None else np.array([])
    draw_histogram(axes, {"chosen": chosen, "rejected": rejected})
    axes.set_xlabel(score_axis_label(kind, aggregate))
    what = report_text(kind).scores
    set_title(axes, label, what)
    caption = (
        f"{what[0].upper()}{what[1:]}: {count_finite(chosen)} chosen and {count_finite(rejected)} rejected "
        "responses (all responses of multi-response rows); the axis is fitted to the scores."
    )
    return Plot(caption, figure)


def margin_plot(scored: pa.Table, kind: str, label: str | None = None) -> Plot:
    margins = column_values(scored, "margin") if "margin" in scored.column_names else np.array([])
    clipped, clip_note = clip_infinities(margins)
    figure, axes = new_figure()
    fitted = draw_histogram(axes, {"margin": clipped}, marker=0.0)
    axes.set_xlabel(margin_axis_label(kind))
    set_title(axes, label, report_text(kind).margins)
    caption = (
        f"Margin per row ({margin_meaning(kind)}; the mean over all comparisons for multi-response rows), "
        f"{len(clipped)} rows; rows at or left of 0 count as losses.{clip_note}"
        + range_note(clipped, fitted, 0.0, "0 (a tie)")
    )
    return Plot(caption, figure)


def margin_axis_label(kind: str) -> str:
    return report_text(kind).margin_axis


def range_note(values: np.ndarray, fitted: AxisRange | None, marker: float, marker_name: str) -> str:
    """A caption note when the axis is fitted so that the reference line is off it, or padded."""
    values = finite(np.asarray(values, dtype=np.float64))
    if fitted is None or values.size == 0:
        return ""
    low, high = number(float(values.min())), number(float(values.max()))
    if fitted.degenerate:
        return f" All values equal {low}: the axis is padded around it."
    if not fitted.marker_shown:
        side = "above" if values.min() > marker else "below"
        return (
            f" All values lie {side} {marker_name}, between {low} and {high}; the axis is fitted to them, "
            f"so the {marker_name} line is off it."
        )
    return ""


def subset_boxplot(scores: np.ndarray, labels: np.ndarray, axis: str = "reward model score") -> Plot:
    names = sorted(set(labels))
    groups = [finite(scores[labels == name]) for name in names]
    figure, axes = new_figure(height=4.5)
    axes.boxplot(groups)
    # Labels set on the axis, not through boxplot's keywords, which were renamed in matplotlib 3.9/3.10.
    axes.set_xticks(np.arange(1, len(names) + 1), [matplotlib_safe(name) for name in names], rotation=30, ha="right")
    axes.set_ylabel(axis)
    return Plot(f"{axis[0].upper()}{axis[1:]} per subset (box: quartiles; whiskers: 1.5 IQR).", figure)


def fitted_range(pooled: np.ndarray, marker: float | None = None) -> AxisRange:
    """A histogram's x-range: the data's own range (never a fixed one such as 0..1); padded when the
    values are (nearly) all equal; extended to take in the reference `marker` only when it is near
    (within a quarter of the data's width), so a narrow band far from it is not squashed."""
    low, high = float(pooled.min()), float(pooled.max())
    scale = max(abs(low), abs(high))
    degenerate = high - low <= 1e-9 * scale or high == low
    if degenerate:
        pad = max(0.01 * scale, 1e-3)
        low, high = low - pad, high + pad
    if marker is not None and not low <= marker <= high:
        gap = low - marker if marker < low else marker - high
        if gap <= 0.25 * (high - low):
            low, high = min(low, marker), max(high, marker)
    return AxisRange(low, high, marker is not None and low <= marker <= high, degenerate)


def draw_histogram(
    axes, series: dict[str, np.ndarray], marker: float | None = None, density: bool = False, step: bool = False
) -> AxisRange | None:
    """Overlaid histograms sharing one set of bins over the data's range, the axis fitted to it (see
    `fitted_range`), and a line at `marker` (0 margin, P = 0.5) when it is on the axis."""
    finite_series = {name: finite(np.asarray(values, dtype=np.float64)) for name, values in series.items()}
    pooled = np.concatenate(list(finite_series.values())) if finite_series else np.array([])
    if pooled.size == 0:
        axes.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=axes.transAxes)
        return None
    fitted = fitted_range(pooled, marker)
    bin_low, bin_high = (fitted.low, fitted.high) if fitted.degenerate else (float(pooled.min()), float(pooled.max()))
    edges = np.linspace(bin_low, bin_high, HISTOGRAM_BINS + 1)
    for name, values in finite_series.items():
        if values.size == 0:
            continue
        style = {"histtype": "step", "linewidth": 1.5} if step else {"alpha": 0.55}
        axes.hist(values, bins=edges, density=density, label=f"{matplotlib_safe(name)} (n={values.size})", **style)
    pad = 0.03 * (fitted.high - fitted.low)
    axes.set_xlim(fitted.low - pad, fitted.high + pad)
    if fitted.marker_shown:
        axes.axvline(marker, color="black", linewidth=0.8)
    axes.set_ylabel("density" if density else "count")
    axes.legend(fontsize="small")
    return fitted


def clip_infinities(values: np.ndarray) -> tuple[np.ndarray, str]:
    """+-inf moved to the finite range's ends (a histogram cannot bin infinity), and a caption note."""
    values = values[~np.isnan(values)]
    finite_values = finite(values)
    low, high = (float(finite_values.min()), float(finite_values.max())) if finite_values.size else (-1.0, 1.0)
    positive, negative = int(np.sum(values == np.inf)), int(np.sum(values == -np.inf))
    clipped = np.clip(values, low, high)
    notes = []
    if positive:
        notes.append(f"{positive} margins of +inf are drawn at {number(high)}")
    if negative:
        notes.append(f"{negative} margins of -inf are drawn at {number(low)}")
    note = f" Clipped for plotting: {' and '.join(notes)}, the finite range's ends." if notes else ""
    return clipped, note


def set_title(axes, label: str | None, what: str) -> None:
    axes.set_title(matplotlib_safe(f"{label}: {what}" if label else what), fontsize="medium")


def new_figure(height: float = 3.5) -> tuple[Figure, Any]:
    # A bare Figure on an Agg canvas, not pyplot: no global figure registry to leak into or to
    # close, no GUI backend picked up from the environment, safe off the main thread.
    figure = Figure(figsize=(8, height), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def figure_png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    figure.clear()  # drop the artists now rather than whenever the figure is collected
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def matplotlib_safe(label: str) -> str:
    """User text as literal matplotlib text: an unescaped `$` pair would be parsed as mathtext."""
    return str(label).replace("$", r"\$")


def values_of_either(table: pa.Table, single: str, multi: str) -> np.ndarray | None:
    """A one-per-row column's values, or its list counterpart's values flattened; None if neither."""
    if single in table.column_names:
        return column_values(table, single)
    if multi in table.column_names:
        return list_values(table, multi)
    return None


def finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def count_finite(values: np.ndarray) -> int:
    return int(np.isfinite(values).sum())
