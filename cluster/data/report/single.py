"""The report of one scoring output: what was measured, the summary's tables, the kind's sections,
plots and examples, written as one page."""

from __future__ import annotations

import html
from pathlib import Path

import pyarrow as pa

from cluster.data.metrics import RM_BENCH_LEVELS, format_summary, margin_meaning, percent_ci, summarize
from cluster.data.report.examples import EXAMPLES, Example, pair_examples, score_examples
from cluster.data.report.facts import report_stamp, run_facts
from cluster.data.report.kinds import kind_name, with_kind
from cluster.data.report.load import ScoredRun, scored_rows
from cluster.data.report.markup import STAT_KEYS, html_table, page_html, plot_html, stat_cell, write_page
from cluster.data.report.plots import Plot, pair_plots, score_plots
from cluster.data.report.prm import (
    prm_aggregate,
    prm_plots,
    prm_separator,
    prm_solutions,
    step_rewards_html,
    steps_html,
    weakest_examples,
)
from cluster.data.report.ratings import rating_plot, rating_scale, ratings_html
from cluster.kinds import unit_of

DEFAULT_TITLE = "Scoring report"


def write_report(
    table: pa.Table,
    out_html: str | Path,
    summary: dict | None = None,
    title: str = DEFAULT_TITLE,
    run: ScoredRun | None = None,
    examples: int = EXAMPLES,
) -> Path:
    """Write the report for `table` to `out_html` and return its path.

    `summary` is `cluster.data.metrics.summarize(table)`; pass it when you already have it. `run`
    (from `load_scored`) supplies what was measured; without it those fields read "not recorded".
    """
    summary = with_kind(summary if summary is not None else summarize(table), table, run)
    scored = scored_rows(table, summary)
    label = (run.run.get("model") or run.saved.get("model")) if run is not None else None
    kind, extra = summary["kind"], []
    unit = unit_of(kind)
    aggregate = prm_aggregate(run) if unit == "steps" else None
    if summary["layout"] == "pairs":
        plots = pair_plots(scored, summary, label, aggregate)
        shown = pair_examples(scored, kind, examples)
    else:
        plots = score_plots(scored, label, kind, aggregate)
        shown = {} if unit == "steps" else score_examples(scored, examples)
    if unit == "steps":
        groups = prm_solutions(scored)
        if groups:
            extra.append(("Step rewards", step_rewards_html(groups, aggregate)))
            step_plots = prm_plots(groups, label)
            plots = step_plots + plots if summary["layout"] == "scores" else plots + step_plots
            multi = "chosen_scores" in scored.column_names
            shown = weakest_examples(scored, groups, examples, prm_separator(run), multi) | shown
        else:
            extra.append(("Step rewards", '<p class="note">This output has no step rewards.</p>'))
    if unit == "rating" and summary["layout"] == "scores":
        scale = rating_scale(scored, run)
        plots = [rating_plot(scored, scale, label)] + plots
        table_html = ratings_html(scored, scale)
        if table_html:
            extra.append(("Ratings", table_html))
    page = render_page(title, run_facts(run, summary), summary, plots, shown, extra)
    return write_page(out_html, page)


def render_page(
    title: str,
    facts: dict[str, str],
    summary: dict,
    plots: list[Plot],
    examples: dict[str, list[Example]],
    extra: list[tuple[str, str]] | None = None,
) -> str:
    """The single report; `extra` is (heading, HTML) sections of the Results (a PRM's step rewards ...)."""
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>What was measured</h2>",
        html_table(["", ""], [[name, value] for name, value in facts.items()], css="facts", head=False),
        f'<p class="note">{html.escape(report_stamp())}</p>',
        "<h2>Results</h2>",
        summary_html(summary),
    ]
    sections += [f"<h3>{html.escape(heading)}</h3>\n{body}" for heading, body in extra or []]
    if plots:
        sections.append("<h2>Plots</h2>")
        sections.extend(plot_html(plot) for plot in plots)
    if any(examples.values()):
        sections.append("<h2>Examples</h2>")
        sections.extend(examples_html(heading, rows) for heading, rows in examples.items() if rows)
    sections.append(
        f"<details><summary>Text summary</summary>\n<pre>{html.escape(format_summary(summary))}</pre></details>"
    )
    return page_html(title, sections)


def summary_html(summary: dict) -> str:
    kind = kind_name(summary["kind"])
    overview = [
        ["rows", summary["rows"]],
        ["model kind", kind],
        ["layout", summary["layout"]],
        ["scored", summary["scored"]],
        ["skipped (no result)", summary["skipped"]],
        ["truncated", summary["truncated"]],
    ]
    if summary["layout"] == "pairs":
        overview.append(["accuracy (%) [95% CI]", percent_ci(summary["accuracy"], summary.get("accuracy_ci"), 1)])
    parts = [html_table(["", "value"], overview)]
    if "per_subset" in summary:
        parts += ["<h3>Per subset</h3>", per_subset_html(summary)]
    if "rewardbench" in summary:
        intervals = summary.get("rewardbench_ci") or {}
        rows = [
            [section, percent_ci(value, intervals.get(section), 1)] for section, value in summary["rewardbench"].items()
        ]
        parts += [
            "<h3>RewardBench sections (subsets weighted by scored rows)</h3>",
            html_table(["section", "accuracy (%) [95% CI]"], rows),
        ]
    if "rm_bench" in summary:
        parts += ["<h3>RM-Bench (3x3 style matrix), accuracy (%) [95% CI]</h3>", rm_bench_html(summary)]
    if "score_stats" in summary:
        parts += ["<h3>Score statistics</h3>", stats_html(summary["score_stats"])]
    if summary.get("margin"):
        parts += [
            f"<h3>Margin statistics ({html.escape(margin_meaning(summary['kind']))})</h3>",
            stats_html(summary["margin"]),
        ]
    if summary.get("bootstrap"):
        boot = summary["bootstrap"]
        parts.append(
            f'<p class="note">Intervals: {boot["confidence"]:.0%} percentile bootstrap, '
            f"{boot['resamples']} resamples of the rows (within each subset for subsets and sections), "
            f"seed {boot['seed']}.</p>"
        )
    return "\n".join(parts)


def per_subset_html(summary: dict) -> str:
    if summary["layout"] == "pairs":
        rows = [
            [name, entry["rows"], percent_ci(entry["accuracy"], entry.get("ci"), 1)]
            for name, entry in summary["per_subset"].items()
        ]
        return html_table(["subset", "rows", "accuracy (%) [95% CI]"], rows)
    rows = [[name] + [stat_cell(stats, key) for key in STAT_KEYS] for name, stats in summary["per_subset"].items()]
    return html_table(["subset", *STAT_KEYS], rows)


def rm_bench_html(summary: dict) -> str:
    entries = [("all", summary["rm_bench"])] + list(summary.get("rm_bench_per_subset", {}).items())
    rows = [
        [name, scores["rows"]]
        + [percent_ci(scores[key], (scores.get("ci") or {}).get(key), 1) for key in RM_BENCH_LEVELS]
        for name, scores in entries
    ]
    return html_table(["", "rows", *RM_BENCH_LEVELS], rows)


def stats_html(stats: dict) -> str:
    header, row = list(STAT_KEYS), [stat_cell(stats, key) for key in STAT_KEYS]
    if stats.get("nonfinite"):
        header.append("non-finite (left out)")
        row.append(stats["nonfinite"])
    return html_table(header, [row])


def examples_html(heading: str, examples: list[Example]) -> str:
    columns = list(dict.fromkeys(column for example in examples for column in example.texts))
    with_steps = any(example.steps is not None for example in examples)
    header = "".join(
        f"<th>{html.escape(name)}</th>"
        for name in ["#", "values", *columns, *(["steps (reward: text)"] if with_steps else [])]
    )
    rows = []
    for index, example in enumerate(examples, 1):
        values = "<br>".join(html.escape(value) for value in example.values)
        texts = "".join(
            f'<td><div class="text">{html.escape(example.texts.get(column, ""))}</div></td>' for column in columns
        )
        if with_steps:
            texts += f"<td>{steps_html(example)}</td>"
        rows.append(f'<tr><td>{index}</td><td class="values">{values}</td>{texts}</tr>')
    return (
        f'<h3>{html.escape(heading)}</h3>\n<table class="examples">\n<tr>{header}</tr>\n'
        + "\n".join(rows)
        + "\n</table>"
    )
