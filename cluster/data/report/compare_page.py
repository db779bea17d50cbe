"""The comparison page of several outputs: side-by-side tables, agreement tables, overlaid plots, and
the same numbers as plain text for the terminal."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cluster.data.metrics import column_values, format_table, percent, percent_ci
from cluster.data.report.compare import Comparison, compare
from cluster.data.report.facts import report_stamp, run_facts
from cluster.data.report.kinds import kind_name, score_axis_label
from cluster.data.report.load import ScoredRun, scored_rows
from cluster.data.report.markup import STAT_KEYS, html_table, page_html, plot_html, stat_cell, write_page
from cluster.data.report.plots import (
    FIGURE_DPI,
    Plot,
    accuracy_entries,
    accuracy_plot,
    clip_infinities,
    draw_histogram,
    finite,
    fitted_range,
    margin_axis_label,
    matplotlib_safe,
    new_figure,
)
from cluster.data.report.prm import comparison_step_plots, comparison_steps_html

COMPARE_TITLE = "Scoring comparison"


def write_comparison(
    runs: list[ScoredRun], out_html: str | Path, title: str = COMPARE_TITLE, labels: list[str] | None = None
) -> tuple[Path, Comparison]:
    """Write one comparison page for several outputs of the same corpus; return its path and the numbers."""
    comparison = compare(runs, labels)
    return write_page(out_html, render_comparison_page(title, comparison, comparison_plots(comparison))), comparison


def comparison_plots(comparison: Comparison) -> list[Plot]:
    labels, runs, summaries = comparison.labels, comparison.runs, comparison.summaries
    scored = [scored_rows(run.table, summary) for run, summary in zip(runs, summaries)]
    kinds = [summary["kind"] for summary in summaries]
    if comparison.layout == "pairs":
        margins = [
            clip_infinities(column_values(table, "margin") if "margin" in table.column_names else np.array([]))[0]
            for table in scored
        ]
        return [
            accuracy_plot(list(zip(labels, summaries))),
            *comparison_step_plots(comparison, scored),
            ecdf_plot(
                labels,
                [scaled_by_rms(values) for values in margins],
                xlabel="margin / root mean square of its model's margins (> 0: chosen wins)",
                caption="Margins of every model as cumulative distributions: the share of rows with a "
                "margin at most x. Each model's margins are divided by their root mean square, "
                "since reward differences and critic log-odds (and different reward models) have "
                "different scales; the sign, the verdict, is kept, so each curve's height at 0 is "
                "that model's share of rows lost or tied. +-inf clipped to the finite ends.",
            ),
            small_multiples(
                labels,
                margins,
                [margin_axis_label(kind) for kind in kinds],
                marker=0.0,
                caption="Margins of each model in its own units, each axis fitted to its data.",
            ),
        ]
    scores = [column_values(table, "score") if "score" in table.column_names else np.array([]) for table in scored]
    return [
        overlaid_plot(
            labels,
            scores,
            xlabel="score, standardized per model ((score - mean) / std)",
            caption="Scores of every model, standardized per model (reward models' scales differ) "
            "and drawn as densities.",
        ),
        small_multiples(
            labels,
            scores,
            [score_axis_label(kind) for kind in kinds],
            marker=None,
            caption="Scores of each model in its own units, each axis fitted to its data.",
        ),
        *comparison_step_plots(comparison, scored),
    ]


def kinds_note(comparison: Comparison) -> str:
    """Which parts of the page apply to which models, when their kinds differ or are not reward models."""
    kinds = [summary["kind"] for summary in comparison.summaries]
    if len(set(kinds)) == 1 and kinds[0] in ("reward", "critic"):
        return ""
    described = ", ".join(f"{label}: {kind_name(kind)}" for label, kind in zip(comparison.labels, kinds))
    notes = [f"Model kinds: {described}."]
    if len(set(kinds)) > 1:
        notes.append(
            "Their scores are on different scales (a PRM's solution score is in (0, 1), a pointwise "
            "judge's an expected rating, a reward model's unbounded): compare them by the correlations "
            "and the standardized plots, not by their raw values."
        )
    if "pointwise" in kinds:
        notes.append(
            "A pointwise judge's rating distribution is in its own report (python -m cluster report OUT); "
            "here its expected ratings are its scores."
        )
    return f'<p class="note">{html.escape(" ".join(notes))}</p>'


def standardized(values: np.ndarray) -> np.ndarray:
    """(value - mean) / std over the finite values; a constant series is centered only."""
    values = finite(values)
    if values.size == 0:
        return values
    return (values - values.mean()) / (float(values.std()) or 1.0)


def scaled_by_rms(values: np.ndarray) -> np.ndarray:
    """Finite values over their root mean square: a scale-free spread that keeps each value's sign."""
    values = finite(values)
    rms = float(np.sqrt(np.mean(values**2))) if values.size else 0.0
    return values / rms if rms > 0 else values


def ecdf_plot(labels: list[str], series: list[np.ndarray], xlabel: str, caption: str) -> Plot:
    """Overlaid cumulative distributions with a line at 0: unlike overlaid histograms, one model's
    narrow spike cannot flatten the others' curves."""
    figure, axes = new_figure()
    pooled = np.concatenate([finite(values) for values in series]) if series else np.array([])
    if pooled.size == 0:
        axes.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=axes.transAxes)
        return Plot(caption, figure)
    fitted = fitted_range(pooled, marker=0.0)
    for label, values in zip(labels, series):
        values = np.sort(finite(values))
        if values.size:
            steps = np.concatenate([[fitted.low], values, [fitted.high]])
            shares = np.concatenate([[0.0], np.arange(1, values.size + 1) / values.size, [1.0]])
            axes.step(steps, shares, where="post", label=f"{matplotlib_safe(label)} (n={values.size})")
    pad = 0.03 * (fitted.high - fitted.low)
    axes.set_xlim(fitted.low - pad, fitted.high + pad)
    axes.set_ylim(0, 1.02)
    if fitted.marker_shown:
        axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("share of rows <= x")
    axes.legend(fontsize="small", loc="upper left")
    return Plot(caption, figure)


def overlaid_plot(labels: list[str], series: list[np.ndarray], xlabel: str, caption: str) -> Plot:
    figure, axes = new_figure()
    draw_histogram(
        axes, {label: standardized(values) for label, values in zip(labels, series)}, density=True, step=True
    )
    axes.set_xlabel(xlabel)
    return Plot(caption, figure)


def small_multiples(
    labels: list[str], series: list[np.ndarray], xlabels: list[str], marker: float | None, caption: str
) -> Plot:
    figure = Figure(figsize=(8, 1.9 * len(labels) + 0.4), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    for axes, label, values, xlabel in zip(np.atleast_1d(figure.subplots(len(labels), 1)), labels, series, xlabels):
        draw_histogram(axes, {label: values}, marker=marker)
        axes.set_xlabel(xlabel, fontsize="small")
    return Plot(caption, figure)


def render_comparison_page(title: str, comparison: Comparison, plots: list[Plot]) -> str:
    labels = comparison.labels
    facts = [run_facts(run, summary) for run, summary in zip(comparison.runs, comparison.summaries)]
    sections = [f"<h1>{html.escape(title)}</h1>"]
    sections += [f'<p class="warning">Warning: {html.escape(warning)}</p>' for warning in comparison.warnings]
    sections += [
        "<h2>What was measured</h2>",
        html_table(["", *labels], [[name] + [fact[name] for fact in facts] for name in facts[0]], css="facts"),
        f'<p class="note">{html.escape(report_stamp())}</p>',
    ]
    note = kinds_note(comparison)
    if note:
        sections.append(note)
    if comparison.layout == "pairs":
        sections += [
            "<h2>Accuracy (%) [95% bootstrap interval]</h2>",
            comparison_accuracy_html(comparison),
            "<h2>Agreement on common rows</h2>",
            pair_agreement_html(comparison),
        ]
    else:
        sections += [
            "<h2>Scores</h2>",
            comparison_scores_html(comparison),
            "<h2>Agreement on common rows</h2>",
            score_agreement_html(comparison),
        ]
    steps = comparison_steps_html(comparison)
    if steps:
        sections += ["<h2>Step rewards</h2>", steps]
    if plots:
        sections.append("<h2>Plots</h2>")
        sections.extend(plot_html(plot) for plot in plots)
    return page_html(title, sections)


def comparison_accuracy_rows(comparison: Comparison, digits: int = 1) -> list[list[str]]:
    """Rows scored, then every accuracy any model has, one column per model."""
    per_model = [
        {(group, name): (value, interval) for group, name, value, interval in accuracy_entries(summary)}
        for summary in comparison.summaries
    ]
    keys = list(dict.fromkeys(key for entries in per_model for key in entries))
    rows = [["rows scored"] + [str(summary["scored"]) for summary in comparison.summaries]]
    for group, name in keys:
        label = name if group == "overall" else f"{'subset' if group == 'subset' else group}: {name}"
        rows.append([label] + [percent_ci(*entries.get((group, name), (None, None)), digits) for entries in per_model])
    return rows


def comparison_accuracy_html(comparison: Comparison) -> str:
    return html_table(["", *comparison.labels], comparison_accuracy_rows(comparison))


def pair_agreement_html(comparison: Comparison) -> str:
    header = [
        "model A",
        "model B",
        "common rows",
        "both scored",
        "same winner (rows, %)",
        "same winner (comparisons, %)",
        "margin Pearson",
        "margin Spearman",
        "accuracy A - B (%) [95% CI]",
    ]
    rows = [
        [
            a,
            b,
            agreement["common_rows"],
            agreement["rows"],
            percent(agreement["same_winner"], 1),
            percent(agreement.get("same_comparison"), 1),
            correlation(agreement.get("margin_pearson")),
            correlation(agreement.get("margin_spearman")),
            percent_ci(agreement["accuracy_difference"], agreement["accuracy_difference_ci"], 1),
        ]
        for a, b, agreement in comparison.agreements
    ]
    note = (
        '<p class="note">On the rows both models scored (joined on source_file and source_row): how often they '
        "pick the same winner, per row (chosen_wins) and, for multi-response rows, per comparison; the "
        "correlation of their row margins; and the paired accuracy difference with its bootstrap interval.</p>"
    )
    return html_table(header, rows) + "\n" + note


def comparison_scores_html(comparison: Comparison) -> str:
    rows = [[key] + [stat_cell(summary["score_stats"], key) for summary in comparison.summaries] for key in STAT_KEYS]
    return html_table(["", *comparison.labels], rows)


def score_agreement_html(comparison: Comparison) -> str:
    header = ["model A", "model B", "common rows", "both scored", "Pearson", "Spearman"]
    rows = [
        [
            a,
            b,
            agreement["common_rows"],
            agreement["rows"],
            correlation(agreement["pearson"]),
            correlation(agreement["spearman"]),
        ]
        for a, b, agreement in comparison.agreements
    ]
    return html_table(header, rows)


def correlation(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_comparison(comparison: Comparison) -> str:
    """A plain-text rendering of the comparison for terminals."""
    labels = comparison.labels
    if comparison.layout == "pairs":
        blocks = [format_table("accuracy (%) [95% CI]", ["", *labels], comparison_accuracy_rows(comparison))]
        rows = [
            [
                a,
                b,
                str(agreement["rows"]),
                percent(agreement["same_winner"], 1),
                correlation(agreement.get("margin_spearman")),
            ]
            for a, b, agreement in comparison.agreements
        ]
        blocks.append(
            format_table("agreement on common rows", ["A", "B", "rows", "same winner %", "margin Spearman"], rows)
        )
    else:
        rows = [
            [key] + [stat_cell(summary["score_stats"], key) for summary in comparison.summaries] for key in STAT_KEYS
        ]
        blocks = [format_table("scores", ["", *labels], rows)]
        rows = [
            [a, b, str(agreement["rows"]), correlation(agreement["pearson"]), correlation(agreement["spearman"])]
            for a, b, agreement in comparison.agreements
        ]
        blocks.append(format_table("agreement on common rows", ["A", "B", "rows", "Pearson", "Spearman"], rows))
    return "\n\n".join(blocks)
