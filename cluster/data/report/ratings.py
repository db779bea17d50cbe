"""A pointwise judge's parts of the report: its rating scale, the ratings plot and the per-rating table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cluster.data.metrics import column_values, number, percent
from cluster.data.report.load import ScoredRun
from cluster.data.report.markup import html_table
from cluster.data.report.plots import FIGURE_DPI, HISTOGRAM_BINS, Plot, finite, matplotlib_safe


def rating_scale(scored: pa.Table, run: ScoredRun | None = None) -> np.ndarray | None:
    """The judge's rating values in scale order: run.json's model identity (rating_values, else
    ratings), else 1..n when every most probable rating is an integer in 1..n (n = the number of
    probabilities per row), else the ratings seen."""
    identity = run.manifest.get("model") if run is not None and isinstance(run.manifest.get("model"), dict) else {}
    for key in ("rating_values", "ratings"):
        try:
            values = [float(value) for value in identity.get(key) or []]
        except (TypeError, ValueError):
            continue
        if values:
            return np.array(values)
    seen = column_values(scored, "rating") if "rating" in scored.column_names else np.array([])
    seen = np.unique(finite(seen))
    widths = []
    if "rating_probs" in scored.column_names and scored.num_rows:
        widths = [len(value) for value in scored["rating_probs"].to_pylist() if value]
    if widths and len(set(widths)) == 1:
        scale = np.arange(1, widths[0] + 1, dtype=np.float64)
        if np.all(np.isin(seen, scale)):
            return scale
    return seen if seen.size else None


def rating_plot(scored: pa.Table, scale: np.ndarray | None, label: str | None = None) -> Plot:
    """Expected ratings as a histogram (left) and the most probable rating as bars over the scale
    (right), with the probability mass the judge put on each rating beside them."""
    figure = Figure(figsize=(9, 3.4), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    expected = finite(column_values(scored, "score")) if "score" in scored.column_names else np.array([])
    best = finite(column_values(scored, "rating")) if "rating" in scored.column_names else np.array([])
    if expected.size:
        low = min(float(expected.min()), float(scale.min())) if scale is not None and scale.size else expected.min()
        high = max(float(expected.max()), float(scale.max())) if scale is not None and scale.size else expected.max()
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        left.hist(
            expected,
            bins=np.linspace(low, high, HISTOGRAM_BINS + 1),
            color="C0",
            alpha=0.8,
            label=f"expected rating (n={expected.size})",
        )
        left.legend(fontsize="small")
    else:
        left.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=left.transAxes)
    left.set_xlabel("expected rating (sum of rating x probability)")
    left.set_ylabel("rows")
    positions = scale if scale is not None and scale.size else np.unique(best)
    if positions.size:
        counts = np.array([np.sum(best == value) for value in positions])
        step = float(np.min(np.diff(positions))) if positions.size > 1 else 1.0
        width = 0.4 * step
        right.bar(
            positions - width / 2,
            counts,
            width=width,
            color="C0",
            alpha=0.8,
            label=f"most probable rating (n={best.size})",
        )
        mass = rating_mass(scored, positions.size)
        if mass is not None:
            right.bar(positions + width / 2, mass, width=width, color="C1", alpha=0.6, label="probability mass (rows)")
        right.set_xticks(positions, [number(float(value)) for value in positions])
        right.legend(fontsize="small")
    else:
        right.text(0.5, 0.5, "no ratings", ha="center", va="center", transform=right.transAxes)
    right.set_xlabel("rating")
    right.set_ylabel("rows")
    if label:
        figure.suptitle(matplotlib_safe(f"{label}: ratings"), fontsize="medium")
    caption = (
        f"Pointwise judge's ratings of {expected.size} responses: the expected rating (left) and, over the "
        "scale, how many responses had each rating as the most probable one, beside the judge's probability "
        "mass on each rating summed over the responses (right)."
    )
    return Plot(caption, figure)


def rating_mass(scored: pa.Table, width: int) -> np.ndarray | None:
    """The rating probabilities summed over rows, when every row has one per scale value."""
    if "rating_probs" not in scored.column_names:
        return None
    rows = [value for value in scored["rating_probs"].to_pylist() if value is not None]
    if not rows or any(len(value) != width for value in rows):
        return None
    return np.nansum(np.array(rows, dtype=np.float64), axis=0)


def ratings_html(scored: pa.Table, scale: np.ndarray | None) -> str:
    """Per rating value: responses whose most probable rating it is, and the mean probability of it."""
    if scale is None or not scale.size or "rating" not in scored.column_names:
        return ""
    best = column_values(scored, "rating")
    known = best[np.isfinite(best)]
    mass = rating_mass(scored, scale.size)
    with_probs = sum(1 for value in scored["rating_probs"].to_pylist() if value is not None) if mass is not None else 0
    rows = []
    for index, value in enumerate(scale):
        share = float(np.mean(known == value)) if known.size else None
        mean_prob = float(mass[index] / with_probs) if mass is not None and with_probs else None
        rows.append(
            [
                number(float(value)),
                int(np.sum(known == value)),
                percent(share, 1),
                number(mean_prob) if mean_prob is not None else "-",
            ]
        )
    return html_table(["rating", "most probable for (responses)", "share (%)", "mean probability"], rows)
