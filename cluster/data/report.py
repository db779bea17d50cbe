"""One self-contained HTML report over scoring outputs: what was measured, tables, plots, examples.

    python -m cluster report OUT --out report.html [--title T]
    python -m cluster report OUT_A OUT_B [OUT_C ...] --out compare.html [--labels a,b,c]

One output folder gives one model's report; several give a comparison page (side-by-side accuracies,
the models' agreement on the rows they share, overlaid plots). The file has no external assets:
figures are PNGs inlined as base64 data URIs, styles are inline, and every user string (subset names,
model names, paths, prompts and responses, the title) is HTML-escaped, so it can be mailed or attached
to a run as is.

What was measured comes from the output folder: `summary.json` (its `run` block: model, input, dates,
code version, options; older folders lack it) and `run.json`. Every field is optional; a missing one
reads "not recorded". The report's own date and code version come from this process.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cluster.core.errors import InvalidInput
from cluster.core.version import DISTRIBUTION, code_version
from cluster.data.metrics import (
    RM_BENCH_LEVELS,
    Bootstrap,
    column_values,
    format_summary,
    format_table,
    list_values,
    margin_meaning,
    number,
    percent,
    percent_ci,
    subset_labels,
    summarize,
    valid_mask,
)

DEFAULT_TITLE = "Scoring report"
COMPARE_TITLE = "Scoring comparison"
NOT_RECORDED = "not recorded"
HISTOGRAM_BINS = 40
FIGURE_DPI = 100
EXAMPLES = 5  # most confident wins and losses (pairs), or highest and lowest scores, shown each
EXAMPLE_CHARS = 360  # a prompt or response is shortened to this many characters
INPUT_SUFFIXES = (".jsonl", ".json", ".parquet")
OUTPUT_FILES = ("summary.json", "run.json", "errors.jsonl", "kept.parquet", "dropped.parquet")
RESULT_COLUMNS = ("chosen_wins", "score")
SOURCE_KEYS = ("source_file", "source_row")
FEW_COMMON_ROWS = 0.9  # warn when two outputs share fewer than this share of the larger one's rows
CHANCE = 50.0  # accuracy (%) of a coin flip on every comparison
STAT_KEYS = ("count", "mean", "std", "min", "p5", "p50", "p95", "max")
GROUP_COLORS = {"overall": "tab:gray", "RewardBench": "tab:purple", "RM-Bench": "tab:green", "subset": "tab:blue"}
KIND_NAMES = {"reward": "reward model", "critic": "critic", "prm": "process reward model (prm)",
              "pointwise": "pointwise judge"}
STEP_COLUMNS = ("step_rewards", "chosen_step_rewards", "rejected_step_rewards")  # a process reward model's
RATING_COLUMNS = ("rating_probs", "rating", "chosen_rating", "rejected_rating", "chosen_ratings", "rejected_ratings")
SIDE_COLORS = {"solutions": "tab:blue", "chosen": "tab:green", "rejected": "tab:red"}
STEP_BINS = 40  # step-reward histograms: bins over [0, 1]
MIN_SOLUTIONS_PER_STEP = 5  # the step-number plot stops where fewer solutions have that many steps
WEAK_THRESHOLDS = (0.2, 0.5, 0.8)  # shares of solutions whose weakest step reward is below these
DEFAULT_STEP_SEPARATOR = "\n\n"  # the PRM spec's default step_separator, when run.json does not record one
EXAMPLE_STEP_CHARS = 240  # a step's text in the examples is shortened to this many characters
EXAMPLE_STEPS = 30  # steps shown per example solution (the weakest always among them)
PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
table.facts td, table.facts th { text-align: left; }
table.facts td:first-child { font-weight: 600; white-space: nowrap; }
table.examples td { text-align: left; vertical-align: top; font-size: 0.85em; }
table.examples td.values { white-space: nowrap; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; max-height: 16em; overflow: auto; min-width: 12em; }
.warning { background: #fff4e5; border-left: 4px solid #e8a33d; padding: 0.4em 0.8em; margin: 0.5em 0; }
.note { color: #555; font-size: 0.9em; }
ol.steps { margin: 0; padding-left: 2.2em; }
ol.steps li { margin: 0.15em 0; white-space: pre-wrap; overflow-wrap: anywhere; }
ol.steps li.weakest { background: #fde2e1; outline: 1px solid #e06c66; }
ol.steps .reward { font-family: monospace; color: #555; margin-right: 0.5em; }
ol.steps li.weakest .reward { color: #b00; font-weight: 600; }
figure { margin: 1em 0 2em; }
figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
"""


# ---------------------------------------------------------------- loading a scoring output


@dataclass
class ScoredRun:
    """One scoring output: its rows, and what its folder recorded about the run."""

    source: str  # the path as given on the command line
    table: pa.Table
    saved: dict = field(default_factory=dict)  # summary.json, {} when absent or unreadable
    manifest: dict = field(default_factory=dict)  # run.json
    errors_logged: int | None = None  # lines of errors.jsonl; None when the folder has none to count

    @property
    def run(self) -> dict:
        """summary.json's `run` block (model, input, dates, version, options), {} when not recorded."""
        run = self.saved.get("run")
        return run if isinstance(run, dict) else {}

    @property
    def name(self) -> str:
        path = Path(self.source)
        return (path.stem if path.is_file() else path.name) or str(path)


def load_scored(path: str | Path) -> ScoredRun:
    """A scoring output folder (or a parquet file of scored rows), checked first, so that a wrong
    argument is one clear InvalidInput (a line the CLI prints), not a pyarrow traceback."""
    given = str(path)
    path = Path(path)
    if not path.exists():
        raise InvalidInput(f"{given}: no such file or folder")
    if path.is_file():
        return ScoredRun(given, _read_scored_file(path, given))
    parts = path / "parts"
    if not parts.is_dir():
        if _holds_input_files(path):
            raise InvalidInput(f"{given}: a folder of input files, not a scoring output; run "
                               f"python -m cluster score {shlex.quote(given)} OUT first, then report OUT")
        raise InvalidInput(f"{given}: not a scoring output folder (it has no parts/; python -m cluster score "
                           "INPUT OUT writes parts/, summary.json and run.json to OUT)")
    shards = sorted(parts.glob("part-*.parquet"))
    if not shards:
        if any(parts.glob("errors-*.jsonl")) or (path / "errors.jsonl").is_file():
            raise InvalidInput(f"{given}: no scored rows: every row scored so far failed (reasons in "
                               f"{path / 'errors.jsonl'} or {parts}/errors-*.jsonl)")
        raise InvalidInput(f"{given}: no scored rows yet (parts/ holds no shards): the run is still going or stopped "
                           "before its first batch; run the same score command again to resume")
    for shard in shards:
        try:
            pq.read_metadata(shard)
        except (pa.ArrowException, OSError) as err:
            raise InvalidInput(f"{shard}: not a readable parquet shard ({first_line(err)}); delete it and run the "
                               "same score command again to rescore its rows") from None
    # Imported here: the pipeline module is heavier than the report needs until now.
    from cluster.data.pipeline import read_scores

    try:
        table = read_scores(path)
    except (pa.ArrowException, OSError) as err:
        raise InvalidInput(f"{given}: its shards cannot be read together ({first_line(err)})") from None
    saved, manifest = _read_json(path / "summary.json"), _read_json(path / "run.json")
    errors_file = path / "errors.jsonl"
    errors_logged = len(errors_file.read_text(encoding="utf-8").splitlines()) if errors_file.is_file() else None
    return ScoredRun(given, table, saved, manifest, errors_logged)


def _read_scored_file(path: Path, given: str) -> pa.Table:
    if path.name in OUTPUT_FILES and (path.parent / "parts").is_dir() and path.suffix != ".parquet":
        folder = shlex.quote(str(path.parent))
        raise InvalidInput(f"{given}: a file of a scoring output; pass its folder: python -m cluster report {folder}")
    if path.suffix in (".jsonl", ".json"):
        raise InvalidInput(input_file_message(given))
    if path.suffix != ".parquet":
        raise InvalidInput(f"{given}: not a scoring output (expected the output folder of python -m cluster score, "
                           "or a parquet file of scored rows)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise InvalidInput(f"{given}: not a readable parquet file ({first_line(err)})") from None
    if not any(column in table.column_names for column in RESULT_COLUMNS):
        raise InvalidInput(input_file_message(given))
    return table


def input_file_message(given: str) -> str:
    return (f"{given}: an input file, not a scoring output; run python -m cluster score {shlex.quote(given)} OUT "
            "first, then report OUT")


def _holds_input_files(folder: Path) -> bool:
    return any(entry.is_file() and entry.suffix in INPUT_SUFFIXES for entry in folder.rglob("*"))


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------- what was measured


def format_version(version: Any) -> str:
    if not isinstance(version, dict) or not version:
        return NOT_RECORDED
    package = version.get("package") or "unknown version"
    git = version.get("git")
    return f"{DISTRIBUTION} {package}, git {git}" if git else f"{DISTRIBUTION} {package} (git commit not recorded)"


def report_stamp() -> str:
    """When and by which code this report was made."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"Report generated {now} by {format_version(code_version())}."


def run_facts(run: ScoredRun | None, summary: dict) -> dict[str, str]:
    """What was measured, as {field: text}; a field the output did not record says so."""
    run = run or ScoredRun("", pa.table({}))
    block, saved, manifest = run.run, run.saved, run.manifest
    identity = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    kind_source = first_of(block.get("model_kind"), saved.get("model_kind"), identity.get("kind"))
    inputs = first_of(block.get("inputs"), manifest.get("inputs"))
    options = block.get("options") if isinstance(block.get("options"), dict) else {
        key: manifest[key] for key in ("shape", "debias") if key in manifest}
    if "model_revision" in block:
        revision = block["model_revision"] or "none pinned"
    else:
        revision = first_of(identity.get("revision"), NOT_RECORDED)
    return {
        "model": text_of_fact(first_of(block.get("model"), saved.get("model"))),
        "model path": text_of_fact(first_of(block.get("model_path"), identity.get("path"))),
        "model kind": text_of_fact(kind_source) if kind_source else f"{summary.get('kind')} (from the table's columns)",
        "model revision": text_of_fact(revision),
        "input": text_of_fact(block.get("input")),
        "input files": files_text(inputs),
        "run": run_dates(block.get("started_at"), block.get("finished_at")),
        "seconds": seconds_text(saved),
        "rows": rows_text(summary, first_of(saved.get("errors"), run.errors_logged)),
        "code version (run)": format_version(block.get("version")),
        "options": ", ".join(f"{key}={value}" for key, value in options.items()) if options else NOT_RECORDED,
        "scores from": run.source or NOT_RECORDED,
    }


def first_of(*values: Any) -> Any:
    return next((value for value in values if value not in (None, "", [], {})), None)


def text_of_fact(value: Any) -> str:
    return NOT_RECORDED if value in (None, "") else str(value)


def files_text(inputs: Any, shown: int = 8) -> str:
    if not isinstance(inputs, list) or not inputs:
        return NOT_RECORDED
    names = [str(name) for name in inputs]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)}: " + ", ".join(names[:shown]) + more


def run_dates(started: Any, finished: Any) -> str:
    if not started and not finished:
        return NOT_RECORDED
    return f"{readable_time(started)} to {readable_time(finished)}"


def readable_time(value: Any) -> str:
    """An ISO-8601 time as 'YYYY-MM-DD HH:MM:SS UTC'; anything else as it was recorded."""
    if not value:
        return NOT_RECORDED
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if moment.tzinfo is not None else "")


def seconds_text(saved: dict) -> str:
    seconds = saved.get("seconds")
    if not isinstance(seconds, int | float):
        return NOT_RECORDED
    text = f"{seconds:.1f}"
    rate = saved.get("rows_per_s")
    if isinstance(rate, int | float) and rate:
        text += f" ({rate:.1f} rows/s)"
    before = saved.get("rows_done_before")
    if isinstance(before, int) and before:
        text += f", the last invocation only: {before} rows were scored by an earlier one"
    return text


def rows_text(summary: dict, errors: Any) -> str:
    errors_text = f"{errors} errors (rows not scored, in errors.jsonl)" if errors is not None else \
        f"errors {NOT_RECORDED}"
    return (f"{summary['scored']} scored, {summary['skipped']} with no result, {errors_text}, "
            f"{summary['truncated']} truncated")


# ---------------------------------------------------------------- the single report


def write_report(table: pa.Table, out_html: str | Path, summary: dict | None = None, title: str = DEFAULT_TITLE,
                 run: ScoredRun | None = None, examples: int = EXAMPLES) -> Path:
    """Write the report for `table` to `out_html` and return its path.

    `summary` is `cluster.data.metrics.summarize(table)`; pass it when you already have it. `run`
    (from `load_scored`) supplies what was measured; without it those fields read "not recorded".
    """
    summary = with_kind(summary if summary is not None else summarize(table), table, run)
    scored = scored_rows(table, summary)
    label = (run.run.get("model") or run.saved.get("model")) if run is not None else None
    kind, extra = summary["kind"], []
    aggregate = prm_aggregate(run) if kind == "prm" else None
    if summary["layout"] == "pairs":
        plots = pair_plots(scored, summary, label, aggregate)
        shown = pair_examples(scored, kind, examples)
    else:
        plots = score_plots(scored, label, kind, aggregate)
        shown = {} if kind == "prm" else score_examples(scored, examples)
    if kind == "prm":
        groups = prm_solutions(scored)
        if groups:
            extra.append(("Step rewards", step_rewards_html(groups, aggregate)))
            step_plots = prm_plots(groups, label)
            plots = step_plots + plots if summary["layout"] == "scores" else plots + step_plots
            multi = "chosen_scores" in scored.column_names
            shown = weakest_examples(scored, groups, examples, prm_separator(run), multi) | shown
        else:
            extra.append(("Step rewards", '<p class="note">This output has no step rewards.</p>'))
    if kind == "pointwise" and summary["layout"] == "scores":
        scale = rating_scale(scored, run)
        plots = [rating_plot(scored, scale, label)] + plots
        table_html = ratings_html(scored, scale)
        if table_html:
            extra.append(("Ratings", table_html))
    page = render_page(title, run_facts(run, summary), summary, plots, shown, extra)
    return write_page(out_html, page)


def scored_rows(table: pa.Table, summary: dict) -> pa.Table:
    column = "chosen_wins" if summary["layout"] == "pairs" else "score"
    if column not in table.column_names:
        return table.slice(0, 0)
    return table.filter(pa.array(valid_mask(table, column)))


def write_page(out_html: str | Path, page: str) -> Path:
    out_path = Path(out_html)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    return out_path


# ---------------------------------------------------------------- plots


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
    return [accuracy_plot([(label or "model", summary)]), score_distribution_plot(scored, kind, label, aggregate),
            margin_plot(scored, kind, label)]


def score_plots(scored: pa.Table, label: str | None = None, kind: str = "reward",
                aggregate: str | None = None) -> list[Plot]:
    scores = column_values(scored, "score") if "score" in scored.column_names else np.array([])
    figure, axes = new_figure()
    draw_histogram(axes, {"score": scores})
    axis = score_axis_label(kind, aggregate)
    axes.set_xlabel(axis)
    what = {"prm": "PRM solution scores", "pointwise": "expected ratings"}.get(kind, "reward model scores")
    set_title(axes, label, what)
    plots = [Plot(f"{what[0].upper()}{what[1:]} distribution ({count_finite(scores)} rows); the axis is fitted to the "
                  "scores.", figure)]
    labels = subset_labels(scored)
    if labels is not None:
        plots.append(subset_boxplot(scores, labels, axis))
    return plots


def accuracy_entries(summary: dict) -> list[tuple[str, str, float | None, list[float] | None]]:
    """(group, name, accuracy, interval) for every accuracy the summary holds, in display order."""
    entries = [("overall", "all rows", summary.get("accuracy"), summary.get("accuracy_ci"))]
    intervals = summary.get("rewardbench_ci") or {}
    entries += [("RewardBench", section, value, intervals.get(section))
                for section, value in (summary.get("rewardbench") or {}).items()]
    if "rm_bench" in summary:
        rm_bench = summary["rm_bench"]
        entries += [("RM-Bench", level, rm_bench[level], (rm_bench.get("ci") or {}).get(level))
                    for level in RM_BENCH_LEVELS]
    entries += [("subset", name, entry["accuracy"], entry.get("ci"))
                for name, entry in (summary.get("per_subset") or {}).items()]
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
        axes.barh(positions - 0.4 + bar * (index + 0.5), accuracy, height=bar, xerr=errors, color=colors,
                  error_kw={"ecolor": "black", "elinewidth": 0.8, "capsize": 2},
                  label=matplotlib_safe(label) if models > 1 else None)
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
    caption = (f"Accuracy{who}: overall, benchmark sections and per subset, with 95% bootstrap intervals "
               f"(rows resampled); the dashed line is chance ({CHANCE:.0f}%).")
    return Plot(caption, figure)


def score_distribution_plot(scored: pa.Table, kind: str, label: str | None = None,
                            aggregate: str | None = None) -> Plot:
    """Chosen vs rejected reward scores, overlaid; for a critic, its P(chosen wins) instead."""
    figure, axes = new_figure()
    probs = values_of_either(scored, "prob_chosen", "probs_chosen")
    if kind == "critic" or probs is not None:
        probs = probs if probs is not None else np.array([])
        fitted = draw_histogram(axes, {"P(chosen wins)": probs}, marker=0.5)
        axes.set_xlabel("critic P(chosen wins)")
        set_title(axes, label, "critic verdicts")
        caption = (f"Critic verdicts: P(chosen wins) over {count_finite(probs)} comparisons "
                   "(every chosen x rejected comparison for multi-response rows)."
                   + range_note(probs, fitted, 0.5, "P = 0.5"))
        return Plot(caption, figure)
    chosen = values_of_either(scored, "chosen_score", "chosen_scores")
    rejected = values_of_either(scored, "rejected_score", "rejected_scores")
    chosen = chosen if chosen is not None else np.array([])
    rejected = rejected if rejected is not None else np.array([])
    draw_histogram(axes, {"chosen": chosen, "rejected": rejected})
    axes.set_xlabel(score_axis_label(kind, aggregate))
    what = {"prm": "PRM solution scores", "pointwise": "expected ratings"}.get(kind, "reward model scores")
    set_title(axes, label, what)
    caption = (f"{what[0].upper()}{what[1:]}: {count_finite(chosen)} chosen and {count_finite(rejected)} rejected "
               "responses (all responses of multi-response rows); the axis is fitted to the scores.")
    return Plot(caption, figure)


def margin_plot(scored: pa.Table, kind: str, label: str | None = None) -> Plot:
    margins = column_values(scored, "margin") if "margin" in scored.column_names else np.array([])
    clipped, clip_note = clip_infinities(margins)
    figure, axes = new_figure()
    fitted = draw_histogram(axes, {"margin": clipped}, marker=0.0)
    axes.set_xlabel(margin_axis_label(kind))
    set_title(axes, label, {"critic": "critic margins", "prm": "PRM score margins",
                            "pointwise": "rating margins"}.get(kind, "reward margins"))
    caption = (f"Margin per row ({margin_meaning(kind)}; the mean over all comparisons for multi-response rows), "
               f"{len(clipped)} rows; rows at or left of 0 count as losses.{clip_note}"
               + range_note(clipped, fitted, 0.0, "0 (a tie)"))
    return Plot(caption, figure)


def margin_axis_label(kind: str) -> str:
    if kind == "pointwise":
        return "rating margin: chosen expected rating - rejected"
    if kind == "prm":
        return "PRM margin: chosen solution score - rejected"
    return ("critic margin: log-odds that chosen wins" if kind == "critic"
            else "reward margin: chosen score - rejected score")


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
        return (f" All values lie {side} {marker_name}, between {low} and {high}; the axis is fitted to them, "
                f"so the {marker_name} line is off it.")
    return ""


def subset_boxplot(scores: np.ndarray, labels: np.ndarray, axis: str = "reward model score") -> Plot:
    names = sorted(set(labels))
    groups = [finite(scores[labels == name]) for name in names]
    figure, axes = new_figure(height=4.5)
    axes.boxplot(groups)
    # Labels set on the axis, not through boxplot's keywords, which were renamed in matplotlib 3.9/3.10.
    axes.set_xticks(np.arange(1, len(names) + 1), [matplotlib_safe(name) for name in names],
                    rotation=30, ha="right")
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


def draw_histogram(axes, series: dict[str, np.ndarray], marker: float | None = None, density: bool = False,
                   step: bool = False) -> AxisRange | None:
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


# ---------------------------------------------------------------- example rows


@dataclass
class Example:
    values: list[str]  # margin, scores or probabilities, subset, where the row came from
    texts: dict[str, str]  # column -> shortened text (prompt, chosen, rejected / conversation ...)
    steps: list[tuple[str, float]] | None = None  # a PRM's solution: each step's text ("" if unknown) and reward
    weakest: int | None = None  # the index of the weakest step, highlighted


def pair_examples(scored: pa.Table, kind: str, count: int = EXAMPLES) -> dict[str, list[Example]]:
    """The most confident wins (largest margins among won rows) and losses (smallest margins among
    lost rows); a multi-response row is ranked by its margin, the mean over its comparisons."""
    if count <= 0 or scored.num_rows == 0 or "margin" not in scored.column_names:
        return {}
    margins = column_values(scored, "margin")
    wins = column_values(scored, "chosen_wins") == 1.0
    known = ~np.isnan(margins)
    won = np.flatnonzero(wins & known)
    lost = np.flatnonzero(~wins & known)
    best = won[np.argsort(-margins[won], kind="stable")][:count]
    worst = lost[np.argsort(margins[lost], kind="stable")][:count]
    return {"Most confident wins": pair_example_rows(scored, best, kind),
            "Most confident losses": pair_example_rows(scored, worst, kind)}


def pair_example_rows(scored: pa.Table, indices: np.ndarray, kind: str) -> list[Example]:
    rows = scored.take(pa.array(indices, pa.int64())).to_pylist()
    examples = []
    for row in rows:
        values = [f"margin {number(row.get('margin'))}"]
        if kind == "critic":
            if row.get("prob_chosen") is not None:
                values.append(f"P(chosen wins) {number(row['prob_chosen'])}")
            if row.get("probs_chosen"):
                values.append("P(chosen wins) " + numbers(row["probs_chosen"]))
        else:
            for side in ("chosen", "rejected"):
                if row.get(f"{side}_score") is not None:
                    values.append(f"{side} score {number(row[f'{side}_score'])}")
                if row.get(f"{side}_scores"):
                    values.append(f"{side} scores " + numbers(row[f"{side}_scores"]))
        if row.get("win_rate") is not None:
            values.append(f"win rate {percent(row['win_rate'], 0)}%")
        values += row_origin(row)
        texts = {column: display_text(row[column]) for column in ("prompt", "chosen", "rejected") if column in row}
        examples.append(Example(values, texts))
    return examples


def score_examples(scored: pa.Table, count: int = EXAMPLES) -> dict[str, list[Example]]:
    """The highest and the lowest scored rows of a plain-rows table."""
    if count <= 0 or scored.num_rows == 0 or "score" not in scored.column_names:
        return {}
    scores = column_values(scored, "score")
    known = np.flatnonzero(~np.isnan(scores))
    order = known[np.argsort(-scores[known], kind="stable")]
    lowest = order[::-1][:count]
    return {"Highest scores": score_example_rows(scored, order[:count]),
            "Lowest scores": score_example_rows(scored, lowest)}


def score_example_rows(scored: pa.Table, indices: np.ndarray) -> list[Example]:
    examples = []
    for row in scored.take(pa.array(indices, pa.int64())).to_pylist():
        texts = {column: display_text(row[column])
                 for column in ("conversations", "messages", "prompt", "response") if column in row}
        values = [f"score {number(row.get('score'))}"]
        if row.get("rating") is not None:
            values.append(f"most probable rating {number(row['rating'])}")
        examples.append(Example(values + row_origin(row), texts))
    return examples


def row_origin(row: dict) -> list[str]:
    origin = []
    if "subset" in row:
        origin.append(f"subset {row['subset']}")
    if row.get("source_file") is not None:
        origin.append(f"{row['source_file']} row {row.get('source_row')}")
    return origin


def numbers(values: list) -> str:
    return "[" + ", ".join(number(value) for value in values) + "]"


def display_text(value: Any, limit: int = EXAMPLE_CHARS) -> str:
    """A prompt or response as short plain text: a string; a message list as 'role: content' lines;
    several responses (RM-Bench) numbered, each shortened to its share of `limit`."""
    if value is None:
        return ""
    if isinstance(value, str):
        return shorten(value, limit)
    if isinstance(value, dict):
        return shorten(message_text(value), limit)
    if isinstance(value, list | tuple):
        if value and all(isinstance(item, dict) for item in value):
            return shorten("\n".join(message_text(item) for item in value), limit)
        share = max(60, limit // max(1, len(value)))
        return "\n".join(f"[{index}] {display_text(item, share)}" for index, item in enumerate(value, 1))
    return shorten(str(value), limit)


def message_text(message: dict) -> str:
    if "content" not in message:
        return json.dumps(message, ensure_ascii=False, default=str)
    content = message["content"]
    content = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, default=str)
    return f"{message.get('role', '?')}: {content}"


def shorten(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return f"{text[:limit].rstrip()}… [{len(text)} characters]"


# ---------------------------------------------------------------- model kinds: process reward models, pointwise judges


def table_kind(table: pa.Table, summary_kind: str | None = None, saved: dict | None = None) -> str:
    """The model kind of a scored table: "prm" when it holds step rewards, "pointwise" when it holds a
    judge's ratings, else what the summary (or summary.json) says ("reward", "critic", ...)."""
    columns = set(table.column_names)
    if summary_kind in ("prm", "pointwise"):
        return summary_kind
    if columns & set(STEP_COLUMNS):
        return "prm"
    if columns & set(RATING_COLUMNS):
        return "pointwise"
    saved_kind = (saved or {}).get("kind")
    if summary_kind in (None, "reward") and saved_kind in ("prm", "pointwise"):
        return saved_kind
    return summary_kind or "reward"


def with_kind(summary: dict, table: pa.Table, run: ScoredRun | None = None) -> dict:
    """`summary` with its kind corrected to the table's (metrics may only know reward and critic)."""
    kind = table_kind(table, summary.get("kind"), run.saved if run is not None else None)
    return summary if kind == summary.get("kind") else {**summary, "kind": kind}


def kind_name(kind: str | None) -> str:
    return KIND_NAMES.get(str(kind), str(kind))


def score_axis_label(kind: str | None, aggregate: str | None = None) -> str:
    if kind == "prm":
        return f"PRM solution score ({aggregate or 'aggregate'} of its step rewards)"
    if kind == "pointwise":
        return "judge's expected rating"
    return "reward model score"


@dataclass
class Solutions:
    """A PRM's scored solutions of one group (all of a plain table's, or a pair table's chosen or
    rejected ones): each solution's step rewards, and where it is (row of the scored table, side,
    position in the side's list of responses)."""

    label: str  # "solutions", "chosen" or "rejected"
    rewards: list[np.ndarray]
    rows: list[int]
    items: list[int]  # index within the row's list of responses (multi-response pairs), else 0

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(r) for r in self.rewards], dtype=np.int64)

    @property
    def all_rewards(self) -> np.ndarray:
        return np.concatenate(self.rewards) if self.rewards else np.array([])

    def weakest(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(reward, index, steps) of each solution's weakest step (the first on a tie, as the
        pipeline's `weakest_step`), over the solutions with at least one step."""
        kept = [r for r in self.rewards if len(r)]
        return (np.array([float(r.min()) for r in kept]), np.array([int(np.argmin(r)) for r in kept], dtype=np.int64),
                np.array([len(r) for r in kept], dtype=np.int64))


def step_reward_list(value: Any) -> np.ndarray:
    """One solution's step rewards as float64, nulls and non-finite values left out."""
    values = np.array([np.nan if v is None else float(v) for v in value], dtype=np.float64)
    return values[np.isfinite(values)]


def prm_solutions(scored: pa.Table) -> list[Solutions]:
    """The solutions of a PRM table: one group for plain rows (`step_rewards`), chosen and rejected
    for pairs (`chosen_step_rewards`, `rejected_step_rewards`; a list per response for multi-response
    rows). A row with null step rewards (it errored) is left out; an empty list is a solution of 0 steps."""
    if "step_rewards" in scored.column_names:
        columns = [("solutions", "step_rewards")]
    else:
        columns = [(side, f"{side}_step_rewards") for side in ("chosen", "rejected")
                   if f"{side}_step_rewards" in scored.column_names]
    groups = []
    for label, column in columns:
        group = Solutions(label, [], [], [])
        for row, value in enumerate(scored[column].to_pylist()):
            if value is None:
                continue
            nested = bool(value) and all(item is None or isinstance(item, list | tuple) for item in value)
            for item, rewards in enumerate(value if nested else [value]):
                if rewards is not None:
                    group.rewards.append(step_reward_list(rewards))
                    group.rows.append(row)
                    group.items.append(item)
        groups.append(group)
    return groups


def step_statistics(group: Solutions) -> dict:
    """The step-reward table's numbers for one group of solutions (None where there is nothing to average)."""
    lengths, rewards = group.lengths, group.all_rewards
    weakest, index, steps = group.weakest()
    with_steps = len(weakest)

    def share(mask: np.ndarray) -> float | None:
        return float(np.mean(mask)) if with_steps else None

    return {
        "solutions": len(group.rewards),
        "empty": int(np.sum(lengths == 0)),
        "steps": int(lengths.sum()),
        "mean_steps": float(lengths.mean()) if lengths.size else None,
        "mean_reward": float(rewards.mean()) if rewards.size else None,
        "median_reward": float(np.median(rewards)) if rewards.size else None,
        "mean_weakest": float(weakest.mean()) if with_steps else None,
        "weakest_below": {threshold: share(weakest < threshold) for threshold in WEAK_THRESHOLDS},
        "weakest_at": {"first": share((index == 0) & (steps > 1)),
                       "middle": share((index > 0) & (index < steps - 1)),
                       "last": share((index == steps - 1) & (steps > 1)),
                       "only step": share(steps == 1)},
    }


def step_table_rows(stats: list[dict]) -> list[list[str]]:
    """The step-reward table, one column per group (or per model in a comparison)."""
    def cells(key: str, format_value) -> list[str]:
        return [format_value(entry[key]) if entry is not None else "-" for entry in stats]

    rows = [["solutions", *cells("solutions", str)], ["steps", *cells("steps", str)],
            ["mean steps per solution", *cells("mean_steps", number)],
            ["mean step reward", *cells("mean_reward", number)],
            ["median step reward", *cells("median_reward", number)],
            ["mean weakest-step reward", *cells("mean_weakest", number)]]
    for threshold in WEAK_THRESHOLDS:
        rows.append([f"weakest step < {threshold:g} (% of solutions)"]
                    + [percent(entry["weakest_below"][threshold], 1) if entry is not None else "-" for entry in stats])
    for where in ("first", "middle", "last", "only step"):
        label = "solutions of one step (%)" if where == "only step" else f"weakest step is the {where} (%)"
        rows.append([label] + [percent(entry["weakest_at"][where], 1) if entry is not None else "-" for entry in stats])
    if any(entry is not None and entry["empty"] for entry in stats):
        rows.append(["solutions with no steps (left out of the weakest-step rows)", *cells("empty", str)])
    return rows


def step_rewards_html(groups: list[Solutions], aggregate: str | None) -> str:
    stats = [step_statistics(group) for group in groups]
    table = html_table(["", *[group.label for group in groups]], step_table_rows(stats))
    how = (f"a solution's score is the {aggregate} of its step rewards" if aggregate
           else "how a solution's score aggregates its step rewards is not recorded (min by default)")
    note = ('<p class="note">Step rewards are in (0, 1). The weakest step is a solution\'s lowest step reward '
            "(the first, on a tie); first / middle / last is where it falls in solutions of two or more steps, "
            f"and the shares are of the solutions with at least one step; {html.escape(how)}.</p>")
    return table + "\n" + note


def prm_aggregate(run: ScoredRun | None) -> str | None:
    """The step aggregate the run used: run.json's model identity, else summary.json's steps block."""
    if run is None:
        return None
    identity = run.manifest.get("model") if isinstance(run.manifest.get("model"), dict) else {}
    steps = run.saved.get("steps") if isinstance(run.saved.get("steps"), dict) else {}
    value = first_of(identity.get("step_aggregate"), steps.get("aggregate"), steps.get("step_aggregate"))
    return str(value) if value else None


def group_colors(groups: list[Solutions]) -> list[str]:
    return [SIDE_COLORS.get(group.label, f"C{index}") for index, group in enumerate(groups)]


def unit_edges(values: np.ndarray) -> np.ndarray:
    """Histogram bins over [0, 1] (step rewards are probabilities), widened if a value falls outside."""
    low = min(0.0, float(values.min())) if values.size else 0.0
    high = max(1.0, float(values.max())) if values.size else 1.0
    return np.linspace(low, high, STEP_BINS + 1)


def step_histogram_plot(groups: list[Solutions], label: str | None = None, colors: list[str] | None = None,
                        outline: bool = False) -> Plot:
    """All step rewards (left) and each solution's weakest-step reward (right), on [0, 1]; one colour per group."""
    figure = Figure(figsize=(9, 3.4), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, sharex=True)
    colors = colors or group_colors(groups)
    pooled = np.concatenate([group.all_rewards for group in groups]) if groups else np.array([])
    edges = unit_edges(pooled)
    for axes, title, values_of in ((left, "every step", lambda g: g.all_rewards),
                                   (right, "weakest step of each solution", lambda g: g.weakest()[0])):
        drawn = False
        for group, color in zip(groups, colors):
            values = values_of(group)
            if values.size:
                style = ({"histtype": "step", "linewidth": 1.5} if outline
                         else {"alpha": 0.55 if len(groups) > 1 else 0.8})
                axes.hist(values, bins=edges, color=color, label=f"{matplotlib_safe(group.label)} (n={values.size})",
                          **style)
                drawn = True
        if not drawn:
            axes.text(0.5, 0.5, "no step rewards", ha="center", va="center", transform=axes.transAxes)
        else:
            axes.legend(fontsize="small", loc="upper left")
        axes.axvline(0.5, color="black", linewidth=0.8, linestyle=":")
        axes.set_xlim(edges[0], edges[-1])
        axes.set_xlabel("step reward")
        axes.set_ylabel("count")
        axes.set_title(title, fontsize="medium")
    if label:
        figure.suptitle(matplotlib_safe(f"{label}: step rewards"), fontsize="medium")
    steps = sum(group.all_rewards.size for group in groups)
    solutions = sum(len(group.weakest()[0]) for group in groups)
    caption = (f"Step rewards: all {steps} steps (left) and the weakest step of each of {solutions} solutions "
               "(right), on [0, 1]; the dotted line is 0.5.")
    return Plot(caption, figure)


def steps_by_index(rewards: list[np.ndarray], least: int) -> tuple[list[int], list[np.ndarray]]:
    """Step numbers (1-based) and their rewards across solutions, up to the last step at least `least`
    solutions reach."""
    numbers, values = [], []
    longest = max((len(r) for r in rewards), default=0)
    for index in range(longest):
        at = np.array([r[index] for r in rewards if len(r) > index])
        if at.size < least:
            break
        numbers.append(index + 1)
        values.append(at)
    return numbers, values


def step_index_plot(groups: list[Solutions], label: str | None = None, colors: list[str] | None = None) -> Plot:
    """Mean step reward (line) and its interquartile band by step number, with how many solutions
    reach each step underneath: do rewards fall as solutions go on?"""
    figure = Figure(figsize=(8, 4.2), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    colors = colors or group_colors(groups)
    solutions = max((len(group.rewards) for group in groups), default=0)
    least = max(1, min(MIN_SOLUTIONS_PER_STEP, solutions))
    shown_to, cut = 0, []
    width = 0.8 / max(1, len(groups))
    for offset, (group, color) in enumerate(zip(groups, colors)):
        numbers_shown, values = steps_by_index(group.rewards, least)
        if not numbers_shown:
            continue
        x = np.array(numbers_shown, dtype=np.float64)
        means = np.array([v.mean() for v in values])
        low, high = np.array([np.percentile(v, [25, 75]) for v in values]).T
        top.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
        top.plot(x, means, marker="o", markersize=3, color=color, label=f"{matplotlib_safe(group.label)}: mean")
        bottom.bar(x - 0.4 + width * (offset + 0.5), [v.size for v in values], width=width, color=color, alpha=0.6)
        shown_to = max(shown_to, numbers_shown[-1])
        longest = int(group.lengths.max()) if len(group.rewards) else 0
        if longest > numbers_shown[-1]:
            cut.append(f"{group.label}: {longest}")
    if shown_to == 0:
        top.text(0.5, 0.5, "no step rewards", ha="center", va="center", transform=top.transAxes)
    else:
        top.legend(fontsize="small", loc="lower left")
        top.set_xlim(0.4, shown_to + 0.6)
        bottom.set_xticks(range(1, shown_to + 1) if shown_to <= 30 else bottom.get_xticks())
    top.set_ylabel("step reward")
    bottom.set_ylabel("solutions")
    bottom.set_xlabel("step number")
    if label:
        top.set_title(matplotlib_safe(f"{label}: step reward by step number"), fontsize="medium")
    caption = (f"Step reward by step number: the mean (line) and the interquartile band (25th to 75th percentile) "
               f"of the step rewards at each step, over the solutions that have that many steps (bars below). "
               f"Steps are shown while at least {least} solutions reach them")
    caption += f"; longer solutions go on further ({', '.join(cut)} steps at most)." if cut else "."
    return Plot(caption, figure)


def step_count_plot(groups: list[Solutions], label: str | None = None, colors: list[str] | None = None) -> Plot:
    """How many steps the solutions have: one bar per count, grouped by group."""
    figure, axes = new_figure(height=3.0)
    colors = colors or group_colors(groups)
    longest = max((int(group.lengths.max()) for group in groups if len(group.rewards)), default=-1)
    if longest < 0:
        axes.text(0.5, 0.5, "no solutions", ha="center", va="center", transform=axes.transAxes)
        return Plot("Number of steps per solution: no solutions.", figure)
    counts = np.arange(longest + 1)
    width = 0.8 / len(groups)
    for offset, (group, color) in enumerate(zip(groups, colors)):
        tally = np.bincount(group.lengths, minlength=longest + 1)
        axes.bar(counts - 0.4 + width * (offset + 0.5), tally, width=width, color=color, alpha=0.8,
                 label=f"{matplotlib_safe(group.label)} (n={len(group.rewards)})")
    low = 0 if any(np.any(group.lengths == 0) for group in groups) else 1
    axes.set_xlim(low - 0.6, longest + 0.6)
    if longest - low <= 30:
        axes.set_xticks(range(low, longest + 1))
    axes.set_xlabel("steps in the solution")
    axes.set_ylabel("solutions")
    axes.legend(fontsize="small")
    set_title(axes, label, "steps per solution")
    means = [(group.label, number(float(group.lengths.mean()))) for group in groups if len(group.rewards)]
    mean_text = (f"{means[0][1]} steps on average" if len(means) == 1
                 else "mean: " + ", ".join(f"{name} {value}" for name, value in means))
    return Plot(f"Number of steps per solution ({mean_text}).", figure)


def prm_plots(groups: list[Solutions], label: str | None = None) -> list[Plot]:
    return [step_histogram_plot(groups, label), step_index_plot(groups, label), step_count_plot(groups, label)]


def solution_text(value: Any, item: int, multi: bool) -> Any:
    """A pair side's solution `item` (multi-response rows hold a list per side)."""
    if multi and isinstance(value, list | tuple) and item < len(value):
        return value[item]
    return value


def solution_steps(value: Any, separator: str, count: int) -> list[str] | None:
    """A solution's step texts: a list of steps as is; a text (or a message list's last message)
    split at the model's step separator as the PRM did; None when they do not match `count` rewards."""
    if isinstance(value, list | tuple) and value and isinstance(value[-1], dict):
        value = value[-1].get("content")
    if isinstance(value, list | tuple):
        steps = ["" if step is None else str(step) for step in value]
    elif isinstance(value, str):
        steps = [piece for piece in value.split(separator) if piece.strip()]
    else:
        return None
    return steps if len(steps) == count else None


def weakest_examples(scored: pa.Table, groups: list[Solutions], count: int, separator: str,
                     multi: bool = False) -> dict[str, list[Example]]:
    """Per group, the solutions with the lowest weakest-step reward (ties: the earlier row first),
    each step with its reward and the weakest marked."""
    if count <= 0:
        return {}
    shown = {}
    for group in groups:
        candidates = [i for i, rewards in enumerate(group.rewards) if len(rewards)]
        order = sorted(candidates, key=lambda i: (float(group.rewards[i].min()), group.rows[i], group.items[i]))[:count]
        if not order:
            continue
        rows = scored.take(pa.array([group.rows[i] for i in order], pa.int64())).to_pylist()
        examples = []
        for i, row in zip(order, rows):
            rewards = group.rewards[i]
            weakest = int(np.argmin(rewards))
            values = [f"weakest step {weakest + 1} of {len(rewards)}: {number(float(rewards[weakest]))}"]
            if group.label == "solutions":
                values.append(f"score {number(row.get('score'))}")
                source = first_of(row.get("steps"), row.get("response"),
                                  *(row.get(column) for column in ("conversations", "messages")))
                texts = {"prompt": display_text(row.get("prompt"))} if "prompt" in row else {}
            else:
                values += [f"margin {number(row.get('margin'))}", f"chosen wins: {row.get('chosen_wins')}"]
                source = solution_text(row.get(group.label), group.items[i], multi)
                texts = {"prompt": display_text(row.get("prompt"))} if "prompt" in row else {}
            values += row_origin(row)
            texts = {key: value for key, value in texts.items() if value}
            steps = solution_steps(source, separator, len(rewards))
            if steps is None and source is not None:
                texts["solution"] = display_text(source)
            examples.append(Example(values, texts, steps=list(zip(steps or [""] * len(rewards), rewards.tolist())),
                                    weakest=weakest))
        heading = ("Solutions with the weakest steps" if group.label == "solutions"
                   else f"{group.label.capitalize()} solutions with the weakest steps")
        shown[heading] = examples
    return shown


def prm_separator(run: ScoredRun | None) -> str:
    identity = run.manifest.get("model") if run is not None and isinstance(run.manifest.get("model"), dict) else {}
    separator = identity.get("step_separator")
    return separator if isinstance(separator, str) and separator else DEFAULT_STEP_SEPARATOR


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
        left.hist(expected, bins=np.linspace(low, high, HISTOGRAM_BINS + 1), color="C0", alpha=0.8,
                  label=f"expected rating (n={expected.size})")
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
        right.bar(positions - width / 2, counts, width=width, color="C0", alpha=0.8,
                  label=f"most probable rating (n={best.size})")
        mass = rating_mass(scored, positions.size)
        if mass is not None:
            right.bar(positions + width / 2, mass, width=width, color="C1", alpha=0.6,
                      label="probability mass (rows)")
        right.set_xticks(positions, [number(float(value)) for value in positions])
        right.legend(fontsize="small")
    else:
        right.text(0.5, 0.5, "no ratings", ha="center", va="center", transform=right.transAxes)
    right.set_xlabel("rating")
    right.set_ylabel("rows")
    if label:
        figure.suptitle(matplotlib_safe(f"{label}: ratings"), fontsize="medium")
    caption = (f"Pointwise judge's ratings of {expected.size} responses: the expected rating (left) and, over the "
               "scale, how many responses had each rating as the most probable one, beside the judge's probability "
               "mass on each rating summed over the responses (right).")
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
        rows.append([number(float(value)), int(np.sum(known == value)), percent(share, 1),
                     number(mean_prob) if mean_prob is not None else "-"])
    return html_table(["rating", "most probable for (responses)", "share (%)", "mean probability"], rows)


# ---------------------------------------------------------------- comparing outputs


def compare_labels(runs: list[ScoredRun], labels: list[str] | None = None) -> list[str]:
    """Given labels, else each run's model name (summary.json), else its folder's name; made unique."""
    if labels is not None:
        if len(labels) != len(runs):
            raise InvalidInput(f"--labels names {len(labels)} models for {len(runs)} outputs")
        chosen = [label.strip() or run.name for label, run in zip(labels, runs)]
    else:
        chosen = [str(first_of(run.run.get("model"), run.saved.get("model"), run.name)) for run in runs]
    if len(set(chosen)) < len(chosen):  # the same model twice: name the folders too
        chosen = [f"{label} ({run.name})" if chosen.count(label) > 1 else label for label, run in zip(chosen, runs)]
    unique, seen = [], {}
    for label in chosen:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return unique


def align_rows(a: pa.Table, b: pa.Table) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Row indices into `a` and `b` of the rows both hold, joined on (source_file, source_row), and
    a note when they could only be matched by position (or not at all)."""
    if all(key in table.column_names for key in SOURCE_KEYS for table in (a, b)):
        left = a.select(list(SOURCE_KEYS)).append_column("_a", pa.array(np.arange(a.num_rows), pa.int64()))
        right = b.select(list(SOURCE_KEYS)).append_column("_b", pa.array(np.arange(b.num_rows), pa.int64()))
        joined = left.join(right, keys=list(SOURCE_KEYS), join_type="inner")
        in_a, in_b = joined["_a"].to_numpy(), joined["_b"].to_numpy()
        order = np.argsort(in_a, kind="stable")
        return in_a[order], in_b[order], None
    if a.num_rows == b.num_rows:
        index = np.arange(a.num_rows)
        return index, index, "rows matched by position (no source_file/source_row columns)"
    empty = np.array([], dtype=np.int64)
    return empty, empty, "rows cannot be matched (no source_file/source_row columns and different row counts)"


def pair_agreement(a: pa.Table, b: pa.Table, in_a: np.ndarray, in_b: np.ndarray, boot: Bootstrap) -> dict:
    """How two models' verdicts agree on their common rows that both scored: the share of rows with
    the same `chosen_wins`, of comparisons with the same sign of margin (multi-response rows), the
    correlation of their row margins, and the paired accuracy difference a - b with its interval."""
    a_rows, b_rows = a.take(pa.array(in_a, pa.int64())), b.take(pa.array(in_b, pa.int64()))
    wins_a, wins_b = column_values(a_rows, "chosen_wins"), column_values(b_rows, "chosen_wins")
    both = ~np.isnan(wins_a) & ~np.isnan(wins_b)  # a row either model failed is left out
    result: dict = {"common_rows": len(in_a), "rows": int(both.sum()),
                    "same_winner": float(np.mean(wins_a[both] == wins_b[both])) if both.any() else None}
    result |= comparison_agreement(a_rows.filter(pa.array(both)), b_rows.filter(pa.array(both)))
    if "margin" in a_rows.column_names and "margin" in b_rows.column_names:
        margins_a, margins_b = column_values(a_rows, "margin")[both], column_values(b_rows, "margin")[both]
        keep = np.isfinite(margins_a) & np.isfinite(margins_b)
        result["margin_pearson"] = pearson(margins_a[keep], margins_b[keep])
        result["margin_spearman"] = spearman(margins_a[keep], margins_b[keep])
    accuracy_a = column_values(a_rows, "win_rate" if "win_rate" in a_rows.column_names else "chosen_wins")
    accuracy_b = column_values(b_rows, "win_rate" if "win_rate" in b_rows.column_names else "chosen_wins")
    difference = accuracy_a[both] - accuracy_b[both]
    result["accuracy_difference"] = float(difference.mean()) if difference.size else None
    result["accuracy_difference_ci"] = boot.interval(boot.means(difference, stream="difference"))
    return result


def comparison_agreement(a_rows: pa.Table, b_rows: pa.Table) -> dict:
    """Same winner per comparison (chosen i vs rejected j), over rows where both have as many."""
    if "margins" not in a_rows.column_names or "margins" not in b_rows.column_names or a_rows.num_rows == 0:
        return {}
    lengths_a = pc.list_value_length(a_rows["margins"]).to_numpy(zero_copy_only=False)
    lengths_b = pc.list_value_length(b_rows["margins"]).to_numpy(zero_copy_only=False)
    same = pa.array(lengths_a == lengths_b)
    flat_a, flat_b = list_values(a_rows.filter(same), "margins"), list_values(b_rows.filter(same), "margins")
    if flat_a.size == 0:
        return {}
    return {"comparisons": int(flat_a.size), "same_comparison": float(np.mean((flat_a > 0) == (flat_b > 0)))}


def score_agreement(a: pa.Table, b: pa.Table, in_a: np.ndarray, in_b: np.ndarray) -> dict:
    """Pearson and Spearman correlation of two models' scores on the common rows both scored."""
    scores_a = column_values(a.take(pa.array(in_a, pa.int64())), "score")
    scores_b = column_values(b.take(pa.array(in_b, pa.int64())), "score")
    keep = np.isfinite(scores_a) & np.isfinite(scores_b)
    return {"common_rows": len(in_a), "rows": int(keep.sum()), "pearson": pearson(scores_a[keep], scores_b[keep]),
            "spearman": spearman(scores_a[keep], scores_b[keep])}


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's r; None with fewer than 2 values or when either side is constant."""
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho: Pearson's r of the ranks, ties given their average rank."""
    return pearson(average_ranks(x), average_ranks(y)) if len(x) >= 2 else None


def average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts - 1) / 2 + 1, counts)
    return ranks


@dataclass
class Comparison:
    labels: list[str]
    runs: list[ScoredRun]
    summaries: list[dict]
    agreements: list[tuple[str, str, dict]]  # (label a, label b, pair_agreement or score_agreement)
    warnings: list[str]

    @property
    def layout(self) -> str:
        return self.summaries[0]["layout"]


def compare(runs: list[ScoredRun], labels: list[str] | None = None) -> Comparison:
    """Summaries of each output, the pairwise agreements on common rows, and warnings about the corpora."""
    labels = compare_labels(runs, labels)
    summaries = [with_kind(summarize(run.table), run.table, run) for run in runs]
    layouts = {label: summary["layout"] for label, summary in zip(labels, summaries)}
    if len(set(layouts.values())) > 1:
        described = ", ".join(f"{label}: {layout}" for label, layout in layouts.items())
        raise InvalidInput(f"cannot compare pair outputs with plain-score outputs ({described})")
    warnings, agreements, boot = [], [], Bootstrap()
    for (i, run_a), (j, run_b) in combinations(enumerate(runs), 2):
        a, b = labels[i], labels[j]
        inputs_a, inputs_b = recorded_inputs(run_a), recorded_inputs(run_b)
        if inputs_a is not None and inputs_b is not None and sorted(inputs_a) != sorted(inputs_b):
            warnings.append(f"{a} and {b} were run on different input files ({a}: {', '.join(inputs_a)}; "
                            f"{b}: {', '.join(inputs_b)}): they may not be the same corpus.")
        in_a, in_b, note = align_rows(run_a.table, run_b.table)
        if note:
            warnings.append(f"{a} and {b}: {note}.")
        larger = max(run_a.table.num_rows, run_b.table.num_rows)
        if larger and len(in_a) < FEW_COMMON_ROWS * larger:
            warnings.append(f"{a} and {b} have {len(in_a)} rows in common ({a}: {run_a.table.num_rows} rows, "
                            f"{b}: {run_b.table.num_rows}): not the same corpus, or one run is incomplete; their "
                            "agreement is over the common rows only.")
        if layouts[a] == "pairs":
            agreements.append((a, b, pair_agreement(run_a.table, run_b.table, in_a, in_b, boot)))
        else:
            agreements.append((a, b, score_agreement(run_a.table, run_b.table, in_a, in_b)))
    return Comparison(labels, runs, summaries, agreements, warnings)


def recorded_inputs(run: ScoredRun) -> list[str] | None:
    inputs = first_of(run.run.get("inputs"), run.manifest.get("inputs"))
    return [str(name) for name in inputs] if isinstance(inputs, list) else None


def write_comparison(runs: list[ScoredRun], out_html: str | Path, title: str = COMPARE_TITLE,
                     labels: list[str] | None = None) -> tuple[Path, Comparison]:
    """Write one comparison page for several outputs of the same corpus; return its path and the numbers."""
    comparison = compare(runs, labels)
    return write_page(out_html, render_comparison_page(title, comparison, comparison_plots(comparison))), comparison


def comparison_plots(comparison: Comparison) -> list[Plot]:
    labels, runs, summaries = comparison.labels, comparison.runs, comparison.summaries
    scored = [scored_rows(run.table, summary) for run, summary in zip(runs, summaries)]
    kinds = [summary["kind"] for summary in summaries]
    if comparison.layout == "pairs":
        margins = [clip_infinities(column_values(table, "margin") if "margin" in table.column_names
                                   else np.array([]))[0] for table in scored]
        return [accuracy_plot(list(zip(labels, summaries))),
                *comparison_step_plots(comparison, scored),
                ecdf_plot(labels, [scaled_by_rms(values) for values in margins],
                          xlabel="margin / root mean square of its model's margins (> 0: chosen wins)",
                          caption="Margins of every model as cumulative distributions: the share of rows with a "
                                  "margin at most x. Each model's margins are divided by their root mean square, "
                                  "since reward differences and critic log-odds (and different reward models) have "
                                  "different scales; the sign, the verdict, is kept, so each curve's height at 0 is "
                                  "that model's share of rows lost or tied. +-inf clipped to the finite ends."),
                small_multiples(labels, margins, [margin_axis_label(kind) for kind in kinds], marker=0.0,
                                caption="Margins of each model in its own units, each axis fitted to its data.")]
    scores = [column_values(table, "score") if "score" in table.column_names else np.array([]) for table in scored]
    return [overlaid_plot(labels, scores, xlabel="score, standardized per model ((score - mean) / std)",
                          caption="Scores of every model, standardized per model (reward models' scales differ) "
                                  "and drawn as densities."),
            small_multiples(labels, scores, [score_axis_label(kind) for kind in kinds], marker=None,
                            caption="Scores of each model in its own units, each axis fitted to its data."),
            *comparison_step_plots(comparison, scored)]


def comparison_groups(comparison: Comparison, scored: list[pa.Table] | None = None) -> list[list[Solutions]]:
    """Per model, its PRM solutions (one group per side of a pair table), labelled with the model;
    an empty list for a model with no step rewards."""
    scored = scored or [scored_rows(run.table, summary) for run, summary in zip(comparison.runs, comparison.summaries)]
    per_model = []
    for label, table, summary in zip(comparison.labels, scored, comparison.summaries):
        groups = prm_solutions(table) if summary["kind"] == "prm" else []
        per_model.append([Solutions(label if group.label == "solutions" else f"{label}: {group.label}",
                                    group.rewards, group.rows, group.items) for group in groups])
    return per_model


def comparison_step_plots(comparison: Comparison, scored: list[pa.Table]) -> list[Plot]:
    """Overlaid step-reward and weakest-step histograms and step-number curves, one colour per model
    (and side), for the models that have step rewards."""
    groups = [group for groups in comparison_groups(comparison, scored) for group in groups]
    if not groups:
        return []
    colors = [f"C{index}" for index in range(len(groups))]
    return [step_histogram_plot(groups, colors=colors, outline=True), step_index_plot(groups, colors=colors)]


def comparison_steps_html(comparison: Comparison) -> str:
    """The step-reward table with one column per model (and side) that has step rewards, and a note
    naming the models it does not apply to."""
    kinds = [summary["kind"] for summary in comparison.summaries]
    if "prm" not in kinds:
        return ""
    per_model = comparison_groups(comparison)
    shown = [group for groups in per_model for group in groups]
    parts = []
    if shown:
        parts.append(html_table(["", *[group.label for group in shown]],
                                step_table_rows([step_statistics(group) for group in shown])))
    missing = [f"{label} ({kind_name(kind)})" for label, kind, groups in zip(comparison.labels, kinds, per_model)
               if not groups]
    if missing:
        parts.append(f'<p class="note">Step rewards apply to process reward models only; this part does not apply '
                     f"to {html.escape(', '.join(missing))}.</p>")
    return "\n".join(parts)


def kinds_note(comparison: Comparison) -> str:
    """Which parts of the page apply to which models, when their kinds differ or are not reward models."""
    kinds = [summary["kind"] for summary in comparison.summaries]
    if len(set(kinds)) == 1 and kinds[0] in ("reward", "critic"):
        return ""
    described = ", ".join(f"{label}: {kind_name(kind)}" for label, kind in zip(comparison.labels, kinds))
    notes = [f"Model kinds: {described}."]
    if len(set(kinds)) > 1:
        notes.append("Their scores are on different scales (a PRM's solution score is in (0, 1), a pointwise "
                     "judge's an expected rating, a reward model's unbounded): compare them by the correlations "
                     "and the standardized plots, not by their raw values.")
    if "pointwise" in kinds:
        notes.append("A pointwise judge's rating distribution is in its own report (python -m cluster report OUT); "
                     "here its expected ratings are its scores.")
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
    draw_histogram(axes, {label: standardized(values) for label, values in zip(labels, series)}, density=True,
                   step=True)
    axes.set_xlabel(xlabel)
    return Plot(caption, figure)


def small_multiples(labels: list[str], series: list[np.ndarray], xlabels: list[str], marker: float | None,
                    caption: str) -> Plot:
    figure = Figure(figsize=(8, 1.9 * len(labels) + 0.4), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    for axes, label, values, xlabel in zip(np.atleast_1d(figure.subplots(len(labels), 1)), labels, series, xlabels):
        draw_histogram(axes, {label: values}, marker=marker)
        axes.set_xlabel(xlabel, fontsize="small")
    return Plot(caption, figure)


# ---------------------------------------------------------------- HTML


def render_page(title: str, facts: dict[str, str], summary: dict, plots: list[Plot],
                examples: dict[str, list[Example]], extra: list[tuple[str, str]] | None = None) -> str:
    """The single report; `extra` is (heading, HTML) sections of the Results (a PRM's step rewards ...)."""
    sections = [f"<h1>{html.escape(title)}</h1>", "<h2>What was measured</h2>",
                html_table(["", ""], [[name, value] for name, value in facts.items()], css="facts", head=False),
                f'<p class="note">{html.escape(report_stamp())}</p>', "<h2>Results</h2>", summary_html(summary)]
    sections += [f"<h3>{html.escape(heading)}</h3>\n{body}" for heading, body in extra or []]
    if plots:
        sections.append("<h2>Plots</h2>")
        sections.extend(plot_html(plot) for plot in plots)
    if any(examples.values()):
        sections.append("<h2>Examples</h2>")
        sections.extend(examples_html(heading, rows) for heading, rows in examples.items() if rows)
    sections.append(f"<details><summary>Text summary</summary>\n<pre>{html.escape(format_summary(summary))}</pre>"
                    "</details>")
    return page_html(title, sections)


def page_html(title: str, sections: list[str]) -> str:
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def summary_html(summary: dict) -> str:
    kind = kind_name(summary["kind"])
    overview = [["rows", summary["rows"]], ["model kind", kind], ["layout", summary["layout"]],
                ["scored", summary["scored"]], ["skipped (no result)", summary["skipped"]],
                ["truncated", summary["truncated"]]]
    if summary["layout"] == "pairs":
        overview.append(["accuracy (%) [95% CI]", percent_ci(summary["accuracy"], summary.get("accuracy_ci"), 1)])
    parts = [html_table(["", "value"], overview)]
    if "per_subset" in summary:
        parts += ["<h3>Per subset</h3>", per_subset_html(summary)]
    if "rewardbench" in summary:
        intervals = summary.get("rewardbench_ci") or {}
        rows = [[section, percent_ci(value, intervals.get(section), 1)]
                for section, value in summary["rewardbench"].items()]
        parts += ["<h3>RewardBench sections (subsets weighted by scored rows)</h3>",
                  html_table(["section", "accuracy (%) [95% CI]"], rows)]
    if "rm_bench" in summary:
        parts += ["<h3>RM-Bench (3x3 style matrix), accuracy (%) [95% CI]</h3>", rm_bench_html(summary)]
    if "score_stats" in summary:
        parts += ["<h3>Score statistics</h3>", stats_html(summary["score_stats"])]
    if summary.get("margin"):
        parts += [f"<h3>Margin statistics ({html.escape(margin_meaning(summary['kind']))})</h3>",
                  stats_html(summary["margin"])]
    if summary.get("bootstrap"):
        boot = summary["bootstrap"]
        parts.append(f'<p class="note">Intervals: {boot["confidence"]:.0%} percentile bootstrap, '
                     f'{boot["resamples"]} resamples of the rows (within each subset for subsets and sections), '
                     f'seed {boot["seed"]}.</p>')
    return "\n".join(parts)


def per_subset_html(summary: dict) -> str:
    if summary["layout"] == "pairs":
        rows = [[name, entry["rows"], percent_ci(entry["accuracy"], entry.get("ci"), 1)]
                for name, entry in summary["per_subset"].items()]
        return html_table(["subset", "rows", "accuracy (%) [95% CI]"], rows)
    rows = [[name] + [stat_cell(stats, key) for key in STAT_KEYS] for name, stats in summary["per_subset"].items()]
    return html_table(["subset", *STAT_KEYS], rows)


def rm_bench_html(summary: dict) -> str:
    entries = [("all", summary["rm_bench"])] + list(summary.get("rm_bench_per_subset", {}).items())
    rows = [[name, scores["rows"]] + [percent_ci(scores[key], (scores.get("ci") or {}).get(key), 1)
                                      for key in RM_BENCH_LEVELS]
            for name, scores in entries]
    return html_table(["", "rows", *RM_BENCH_LEVELS], rows)


def stats_html(stats: dict) -> str:
    header, row = list(STAT_KEYS), [stat_cell(stats, key) for key in STAT_KEYS]
    if stats.get("nonfinite"):
        header.append("non-finite (left out)")
        row.append(stats["nonfinite"])
    return html_table(header, [row])


def stat_cell(stats: dict, key: str) -> str:
    return str(stats[key]) if key == "count" else number(stats[key])


def examples_html(heading: str, examples: list[Example]) -> str:
    columns = list(dict.fromkeys(column for example in examples for column in example.texts))
    with_steps = any(example.steps is not None for example in examples)
    header = "".join(f"<th>{html.escape(name)}</th>"
                     for name in ["#", "values", *columns, *(["steps (reward: text)"] if with_steps else [])])
    rows = []
    for index, example in enumerate(examples, 1):
        values = "<br>".join(html.escape(value) for value in example.values)
        texts = "".join(f'<td><div class="text">{html.escape(example.texts.get(column, ""))}</div></td>'
                        for column in columns)
        if with_steps:
            texts += f"<td>{steps_html(example)}</td>"
        rows.append(f'<tr><td>{index}</td><td class="values">{values}</td>{texts}</tr>')
    return f"<h3>{html.escape(heading)}</h3>\n<table class=\"examples\">\n<tr>{header}</tr>\n" + "\n".join(rows) + \
        "\n</table>"


def steps_html(example: Example) -> str:
    """A solution's steps as a numbered list, each with its reward; the weakest highlighted. Long
    solutions show the first steps and the weakest one, with how many were left out."""
    steps = example.steps or []
    shown = list(range(min(len(steps), EXAMPLE_STEPS)))
    if example.weakest is not None and example.weakest >= len(shown) and example.weakest < len(steps):
        shown.append(example.weakest)
    items = []
    for index in shown:
        text, reward = steps[index]
        css = ' class="weakest"' if index == example.weakest else ""
        items.append(f'<li value="{index + 1}"{css}><span class="reward">{html.escape(number(reward))}</span>'
                     f"{html.escape(shorten(text, EXAMPLE_STEP_CHARS))}</li>")
    more = len(steps) - len(shown)
    note = f'<p class="note">{more} more steps not shown</p>' if more > 0 else ""
    return f'<ol class="steps">{"".join(items)}</ol>{note}'


def html_table(header: list[str], rows: list[list], css: str | None = None, head: bool = True) -> str:
    head_row = "<tr>" + "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header) + "</tr>\n" if head else ""
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    css_attr = f' class="{css}"' if css else ""
    return f"<table{css_attr}>\n{head_row}{body}\n</table>"


def plot_html(plot: Plot) -> str:
    return (f'<figure>\n<img src="data:image/png;base64,{figure_png(plot.figure)}" alt="{html.escape(plot.caption)}">\n'
            f"<figcaption>{html.escape(plot.caption)}</figcaption>\n</figure>")


def render_comparison_page(title: str, comparison: Comparison, plots: list[Plot]) -> str:
    labels = comparison.labels
    facts = [run_facts(run, summary) for run, summary in zip(comparison.runs, comparison.summaries)]
    sections = [f"<h1>{html.escape(title)}</h1>"]
    sections += [f'<p class="warning">Warning: {html.escape(warning)}</p>' for warning in comparison.warnings]
    sections += ["<h2>What was measured</h2>",
                 html_table(["", *labels], [[name] + [fact[name] for fact in facts] for name in facts[0]],
                            css="facts"),
                 f'<p class="note">{html.escape(report_stamp())}</p>']
    note = kinds_note(comparison)
    if note:
        sections.append(note)
    if comparison.layout == "pairs":
        sections += ["<h2>Accuracy (%) [95% bootstrap interval]</h2>", comparison_accuracy_html(comparison),
                     "<h2>Agreement on common rows</h2>", pair_agreement_html(comparison)]
    else:
        sections += ["<h2>Scores</h2>", comparison_scores_html(comparison),
                     "<h2>Agreement on common rows</h2>", score_agreement_html(comparison)]
    steps = comparison_steps_html(comparison)
    if steps:
        sections += ["<h2>Step rewards</h2>", steps]
    if plots:
        sections.append("<h2>Plots</h2>")
        sections.extend(plot_html(plot) for plot in plots)
    return page_html(title, sections)


def comparison_accuracy_rows(comparison: Comparison, digits: int = 1) -> list[list[str]]:
    """Rows scored, then every accuracy any model has, one column per model."""
    per_model = [{(group, name): (value, interval) for group, name, value, interval in accuracy_entries(summary)}
                 for summary in comparison.summaries]
    keys = list(dict.fromkeys(key for entries in per_model for key in entries))
    rows = [["rows scored"] + [str(summary["scored"]) for summary in comparison.summaries]]
    for group, name in keys:
        label = name if group == "overall" else f"{'subset' if group == 'subset' else group}: {name}"
        rows.append([label] + [percent_ci(*entries.get((group, name), (None, None)), digits) for entries in per_model])
    return rows


def comparison_accuracy_html(comparison: Comparison) -> str:
    return html_table(["", *comparison.labels], comparison_accuracy_rows(comparison))


def pair_agreement_html(comparison: Comparison) -> str:
    header = ["model A", "model B", "common rows", "both scored", "same winner (rows, %)",
              "same winner (comparisons, %)", "margin Pearson", "margin Spearman", "accuracy A - B (%) [95% CI]"]
    rows = [[a, b, agreement["common_rows"], agreement["rows"], percent(agreement["same_winner"], 1),
             percent(agreement.get("same_comparison"), 1), correlation(agreement.get("margin_pearson")),
             correlation(agreement.get("margin_spearman")),
             percent_ci(agreement["accuracy_difference"], agreement["accuracy_difference_ci"], 1)]
            for a, b, agreement in comparison.agreements]
    note = ('<p class="note">On the rows both models scored (joined on source_file and source_row): how often they '
            "pick the same winner, per row (chosen_wins) and, for multi-response rows, per comparison; the "
            "correlation of their row margins; and the paired accuracy difference with its bootstrap interval.</p>")
    return html_table(header, rows) + "\n" + note


def comparison_scores_html(comparison: Comparison) -> str:
    rows = [[key] + [stat_cell(summary["score_stats"], key) for summary in comparison.summaries] for key in STAT_KEYS]
    return html_table(["", *comparison.labels], rows)


def score_agreement_html(comparison: Comparison) -> str:
    header = ["model A", "model B", "common rows", "both scored", "Pearson", "Spearman"]
    rows = [[a, b, agreement["common_rows"], agreement["rows"], correlation(agreement["pearson"]),
             correlation(agreement["spearman"])] for a, b, agreement in comparison.agreements]
    return html_table(header, rows)


def correlation(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_comparison(comparison: Comparison) -> str:
    """A plain-text rendering of the comparison for terminals."""
    labels = comparison.labels
    if comparison.layout == "pairs":
        blocks = [format_table("accuracy (%) [95% CI]", ["", *labels], comparison_accuracy_rows(comparison))]
        rows = [[a, b, str(agreement["rows"]), percent(agreement["same_winner"], 1),
                 correlation(agreement.get("margin_spearman"))] for a, b, agreement in comparison.agreements]
        blocks.append(format_table("agreement on common rows", ["A", "B", "rows", "same winner %", "margin Spearman"],
                                   rows))
    else:
        rows = [[key] + [stat_cell(summary["score_stats"], key) for summary in comparison.summaries]
                for key in STAT_KEYS]
        blocks = [format_table("scores", ["", *labels], rows)]
        rows = [[a, b, str(agreement["rows"]), correlation(agreement["pearson"]), correlation(agreement["spearman"])]
                for a, b, agreement in comparison.agreements]
        blocks.append(format_table("agreement on common rows", ["A", "B", "rows", "Pearson", "Spearman"], rows))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scores", nargs="+",
                        help="scoring output folder(s) of python -m cluster score (or parquet files of scored rows); "
                             "several folders of the same corpus: one comparison page")
    parser.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    parser.add_argument("--title", help="page title (default: 'Scoring report: <scores name>')")
    parser.add_argument("--labels", help="comparison: comma-separated model labels, one per output "
                                         "(default: the model names the outputs recorded, else the folder names)")
    parser.add_argument("--examples", type=int, default=EXAMPLES,
                        help=f"example rows shown per table: most confident wins and losses (default {EXAMPLES})")


def main(args: argparse.Namespace) -> int:
    paths = [args.scores] if isinstance(args.scores, str | Path) else list(args.scores)
    runs = [load_scored(path) for path in paths]
    labels = getattr(args, "labels", None)
    if len(runs) == 1:
        if labels:
            raise InvalidInput("--labels is for comparing several outputs; one output was given")
        run = runs[0]
        summary = summarize(run.table)
        title = args.title or f"{DEFAULT_TITLE}: {run.name}"
        out_path = write_report(run.table, args.out, summary=summary, title=title, run=run,
                                examples=getattr(args, "examples", EXAMPLES))
        print(format_summary(summary))
    else:
        given = labels.split(",") if labels else None
        chosen = compare_labels(runs, given)
        title = args.title or f"{COMPARE_TITLE}: {' vs '.join(chosen)}"
        out_path, comparison = write_comparison(runs, args.out, title=title, labels=given)
        print(format_comparison(comparison))
        for warning in comparison.warnings:
            print(f"warning: {warning}")
    print(f"\nreport written to {out_path.resolve()}")
    return 0
