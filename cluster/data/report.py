"""One self-contained HTML report over a scored-rows table: summary tables and plots.

`python -m cluster report SCORES --out report.html [--title T]`. The file has no external assets:
figures are PNGs inlined as base64 data URIs, styles are inline, and every user string (subset
names, the title) is HTML-escaped, so it can be mailed or attached to a run as is.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cluster.data.metrics import (
    column_values,
    format_summary,
    list_values,
    number,
    percent,
    subset_labels,
    summarize,
    valid_mask,
)

DEFAULT_TITLE = "Scoring report"
HISTOGRAM_BINS = 40
FIGURE_DPI = 100
STAT_KEYS = ("count", "mean", "std", "min", "p5", "p50", "p95", "max")
PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0 2em; }
figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
"""


@dataclass(frozen=True)
class Plot:
    caption: str  # plain text; escaped when rendered
    png_base64: str


def write_report(
    table: pa.Table, out_html: str | Path, summary: dict | None = None, title: str = DEFAULT_TITLE
) -> Path:
    """Write the report for `table` to `out_html` and return its path.

    `summary` is `cluster.data.metrics.summarize(table)`; pass it when you already have it.
    """
    summary = summary if summary is not None else summarize(table)
    scored = table.filter(pa.array(valid_mask(table, "chosen_wins" if summary["kind"] == "pairs" else "score")))
    plots = pair_plots(scored, summary) if summary["kind"] == "pairs" else score_plots(scored)
    out_path = Path(out_html)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_page(title, summary, plots), encoding="utf-8")
    return out_path


# ---------------------------------------------------------------- plots


def pair_plots(scored: pa.Table, summary: dict) -> list[Plot]:
    plots = [score_distribution_plot(scored), margin_plot(scored, summary)]
    if "per_subset" in summary:
        plots.append(subset_accuracy_plot(summary["per_subset"]))
    return plots


def score_plots(scored: pa.Table) -> list[Plot]:
    scores = column_values(scored, "score")
    figure, axes = new_figure()
    draw_histogram(axes, {"score": scores})
    axes.set_xlabel("score")
    plots = [Plot(f"Score distribution ({count_finite(scores)} rows).", figure_png(figure))]
    labels = subset_labels(scored)
    if labels is not None:
        plots.append(subset_boxplot(scores, labels))
    return plots


def score_distribution_plot(scored: pa.Table) -> Plot:
    """Chosen vs rejected reward scores, overlaid; for a critic, its P(chosen wins) instead."""
    figure, axes = new_figure()
    probs = values_of_either(scored, "prob_chosen", "probs_chosen")
    if probs is not None:
        draw_histogram(axes, {"P(chosen wins)": probs}, value_range=(0.0, 1.0))
        axes.set_xlabel("critic probability that chosen wins")
        caption = (f"Critic verdicts: P(chosen wins) over {count_finite(probs)} comparisons "
                   "(every chosen x rejected comparison for multi-response rows).")
        return Plot(caption, figure_png(figure))
    chosen = values_of_either(scored, "chosen_score", "chosen_scores")
    rejected = values_of_either(scored, "rejected_score", "rejected_scores")
    chosen = chosen if chosen is not None else np.array([])
    rejected = rejected if rejected is not None else np.array([])
    draw_histogram(axes, {"chosen": chosen, "rejected": rejected})
    axes.set_xlabel("reward score")
    caption = (f"Reward scores: {count_finite(chosen)} chosen and {count_finite(rejected)} rejected responses "
               "(all responses of multi-response rows).")
    return Plot(caption, figure_png(figure))


def margin_plot(scored: pa.Table, summary: dict) -> Plot:
    margins = column_values(scored, "margin") if "margin" in scored.column_names else np.array([])
    clipped, clip_note = clip_infinities(margins)
    figure, axes = new_figure()
    draw_histogram(axes, {"margin": clipped})
    axes.axvline(0.0, color="black", linewidth=0.8)
    is_critic = summary.get("scorer") == "critic"
    axes.set_xlabel("log-odds that chosen wins" if is_critic else "chosen score - rejected score")
    meaning = "critic log-odds that chosen wins" if is_critic else "chosen - rejected"
    caption = (f"Margin per row ({meaning}; the mean over all comparisons for multi-response rows), "
               f"{len(clipped)} rows; rows at or left of 0 count as losses.{clip_note}")
    return Plot(caption, figure_png(figure))


def subset_accuracy_plot(per_subset: dict) -> Plot:
    names = list(per_subset)
    accuracies = [100 * (entry["accuracy"] or 0.0) for entry in per_subset.values()]
    figure, axes = new_figure(height=max(2.5, 0.3 * len(names) + 1))
    positions = np.arange(len(names))
    axes.barh(positions, accuracies, color="tab:blue")
    axes.set_yticks(positions, [matplotlib_safe(name) for name in names])
    axes.invert_yaxis()  # first subset (alphabetically) at the top, as in the table
    axes.set_xlim(0, 100)
    axes.set_xlabel("accuracy (%)")
    caption = "Accuracy per subset (subsets with no scored rows are drawn at 0)."
    return Plot(caption, figure_png(figure))


def subset_boxplot(scores: np.ndarray, labels: np.ndarray) -> Plot:
    names = sorted(set(labels))
    groups = [finite(scores[labels == name]) for name in names]
    figure, axes = new_figure(height=4.5)
    axes.boxplot(groups)
    # Labels set on the axis, not through boxplot's keywords, which were renamed in matplotlib 3.9/3.10.
    axes.set_xticks(np.arange(1, len(names) + 1), [matplotlib_safe(name) for name in names],
                    rotation=30, ha="right")
    axes.set_ylabel("score")
    return Plot("Scores per subset (box: quartiles; whiskers: 1.5 IQR).", figure_png(figure))


def draw_histogram(axes, series: dict[str, np.ndarray], value_range: tuple[float, float] | None = None) -> None:
    """Overlaid histograms sharing one set of bins, so the bars of different series line up."""
    finite_series = {name: finite(values) for name, values in series.items()}
    pooled = np.concatenate(list(finite_series.values()))
    if pooled.size == 0:
        axes.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=axes.transAxes)
        return
    low, high = value_range or (float(pooled.min()), float(pooled.max()))
    if low == high:  # one distinct value: give the single bar some width
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    for name, values in finite_series.items():
        axes.hist(values, bins=edges, alpha=0.55, label=f"{name} (n={values.size})")
    axes.set_ylabel("count")
    axes.legend()


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


def new_figure(height: float = 3.5) -> tuple[Figure, object]:
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
    """A subset name as literal tick text: an unescaped `$` pair would be parsed as mathtext."""
    return label.replace("$", r"\$")


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


# ---------------------------------------------------------------- HTML


def render_page(title: str, summary: dict, plots: list[Plot]) -> str:
    sections = [f"<h1>{html.escape(title)}</h1>", summary_html(summary)]
    if plots:
        sections.append("<h2>Plots</h2>")
        sections.extend(plot_html(plot) for plot in plots)
    sections.append(f"<h2>Text summary</h2>\n<pre>{html.escape(format_summary(summary))}</pre>")
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def summary_html(summary: dict) -> str:
    overview = [["rows", summary["rows"]], ["kind", summary["kind"]], ["scored", summary["scored"]],
                ["skipped (errored)", summary["skipped"]], ["truncated", summary["truncated"]]]
    if summary["kind"] == "pairs":
        overview += [["scorer", summary["scorer"]], ["accuracy (%)", percent(summary["accuracy"])]]
    parts = ["<h2>Summary</h2>", html_table(["", "value"], overview)]
    if "per_subset" in summary:
        parts += ["<h3>Per subset</h3>", per_subset_html(summary)]
    if "rewardbench" in summary:
        rows = [[section, percent(value)] for section, value in summary["rewardbench"].items()]
        parts += ["<h3>RewardBench sections (subsets weighted by scored rows)</h3>",
                  html_table(["section", "accuracy (%)"], rows)]
    if "rm_bench" in summary:
        parts += ["<h3>RM-Bench (3x3 style matrix)</h3>", rm_bench_html(summary)]
    if "score_stats" in summary:
        parts += ["<h3>Score statistics</h3>", stats_html(summary["score_stats"])]
    if summary.get("margin"):
        parts += ["<h3>Margin statistics</h3>", stats_html(summary["margin"])]
    return "\n".join(parts)


def per_subset_html(summary: dict) -> str:
    if summary["kind"] == "pairs":
        rows = [[name, entry["rows"], percent(entry["accuracy"])] for name, entry in summary["per_subset"].items()]
        return html_table(["subset", "rows", "accuracy (%)"], rows)
    rows = [[name] + [stat_cell(stats, key) for key in STAT_KEYS] for name, stats in summary["per_subset"].items()]
    return html_table(["subset", *STAT_KEYS], rows)


def rm_bench_html(summary: dict) -> str:
    entries = [("all", summary["rm_bench"])] + list(summary.get("rm_bench_per_subset", {}).items())
    rows = [[name, scores["rows"]] + [percent(scores[key]) for key in ("easy", "normal", "hard", "total")]
            for name, scores in entries]
    return html_table(["", "rows", "easy (%)", "normal (%)", "hard (%)", "total (%)"], rows)


def stats_html(stats: dict) -> str:
    header, row = list(STAT_KEYS), [stat_cell(stats, key) for key in STAT_KEYS]
    if stats.get("nonfinite"):
        header.append("non-finite (left out)")
        row.append(stats["nonfinite"])
    return html_table(header, [row])


def stat_cell(stats: dict, key: str) -> str:
    return str(stats[key]) if key == "count" else number(stats[key])


def html_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def plot_html(plot: Plot) -> str:
    return (f'<figure>\n<img src="data:image/png;base64,{plot.png_base64}" alt="{html.escape(plot.caption)}">\n'
            f"<figcaption>{html.escape(plot.caption)}</figcaption>\n</figure>")


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scores", help="scored output: the pipeline's output folder or a parquet file")
    parser.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    parser.add_argument("--title", help="page title (default: 'Scoring report: <scores name>')")


def main(args: argparse.Namespace) -> int:
    # Imported here: the pipeline module pulls in Ray, which the report itself does not need.
    from cluster.data.pipeline import read_scores

    table = read_scores(args.scores)
    summary = summarize(table)
    title = args.title or f"{DEFAULT_TITLE}: {Path(args.scores).name}"
    out_path = write_report(table, args.out, summary=summary, title=title)
    print(format_summary(summary))
    print(f"\nreport written to {out_path.resolve()}")
    return 0
