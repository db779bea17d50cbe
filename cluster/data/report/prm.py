"""A process reward model's parts of the report, alone and in a comparison: the step-reward table and
plots, and the solutions with the weakest steps, each step with its reward."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cluster.data.metrics import number, percent
from cluster.data.report.compare import Comparison
from cluster.data.report.examples import Example, display_text, row_origin, shorten
from cluster.data.report.facts import first_of
from cluster.data.report.kinds import kind_name
from cluster.data.report.load import ScoredRun, scored_rows
from cluster.data.report.markup import html_table
from cluster.data.report.plots import FIGURE_DPI, Plot, matplotlib_safe, new_figure, set_title
from cluster.kinds import unit_of

SIDE_COLORS = {"solutions": "tab:blue", "chosen": "tab:green", "rejected": "tab:red"}
STEP_BINS = 40  # step-reward histograms: bins over [0, 1]
MIN_SOLUTIONS_PER_STEP = 5  # the step-number plot stops where fewer solutions have that many steps
WEAK_THRESHOLDS = (0.2, 0.5, 0.8)  # shares of solutions whose weakest step reward is below these
DEFAULT_STEP_SEPARATOR = "\n\n"  # the PRM spec's default step_separator, when run.json does not record one
EXAMPLE_STEP_CHARS = 240  # a step's text in the examples is shortened to this many characters
EXAMPLE_STEPS = 30  # steps shown per example solution (the weakest always among them)


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
        return (
            np.array([float(r.min()) for r in kept]),
            np.array([int(np.argmin(r)) for r in kept], dtype=np.int64),
            np.array([len(r) for r in kept], dtype=np.int64),
        )


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
        columns = [
            (side, f"{side}_step_rewards")
            for side in ("chosen", "rejected")
            if f"{side}_step_rewards" in scored.column_names
        ]
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
        "weakest_at": {
            "first": share((index == 0) & (steps > 1)),
            "middle": share((index > 0) & (index < steps - 1)),
            "last": share((index == steps - 1) & (steps > 1)),
            "only step": share(steps == 1),
        },
    }


def step_table_rows(stats: list[dict]) -> list[list[str]]:
    """The step-reward table, one column per group (or per model in a comparison)."""

    def cells(key: str, format_value) -> list[str]:
        return [format_value(entry[key]) if entry is not None else "-" for entry in stats]

    rows = [
        ["solutions", *cells("solutions", str)],
        ["steps", *cells("steps", str)],
        ["mean steps per solution", *cells("mean_steps", number)],
        ["mean step reward", *cells("mean_reward", number)],
        ["median step reward", *cells("median_reward", number)],
        ["mean weakest-step reward", *cells("mean_weakest", number)],
    ]
    for threshold in WEAK_THRESHOLDS:
        rows.append(
            [f"weakest step < {threshold:g} (% of solutions)"]
            + [percent(entry["weakest_below"][threshold], 1) if entry is not None else "-" for entry in stats]
        )
    for where in ("first", "middle", "last", "only step"):
        label = "solutions of one step (%)" if where == "only step" else f"weakest step is the {where} (%)"
        rows.append([label] + [percent(entry["weakest_at"][where], 1) if entry is not None else "-" for entry in stats])
    if any(entry is not None and entry["empty"] for entry in stats):
        rows.append(["solutions with no steps (left out of the weakest-step rows)", *cells("empty", str)])
    return rows


def step_rewards_html(groups: list[Solutions], aggregate: str | None) -> str:
    stats = [step_statistics(group) for group in groups]
    table = html_table(["", *[group.label for group in groups]], step_table_rows(stats))
    how = (
        f"a solution's score is the {aggregate} of its step rewards"
        if aggregate
        else "how a solution's score aggregates its step rewards is not recorded (min by default)"
    )
    note = (
        '<p class="note">Step rewards are in (0, 1). The weakest step is a solution\'s lowest step reward '
        "(the first, on a tie); first / middle / last is where it falls in solutions of two or more steps, "
        f"and the shares are of the solutions with at least one step; {html.escape(how)}.</p>"
    )
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


def step_histogram_plot(
    groups: list[Solutions], label: str | None = None, colors: list[str] | None = None, outline: bool = False
) -> Plot:
    """All step rewards (left) and each solution's weakest-step reward (right), on [0, 1]; one colour per group."""
    figure = Figure(figsize=(9, 3.4), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, sharex=True)
    colors = colors or group_colors(groups)
    pooled = np.concatenate([group.all_rewards for group in groups]) if groups else np.array([])
    edges = unit_edges(pooled)
    for axes, title, values_of in (
        (left, "every step", lambda g: g.all_rewards),
        (right, "weakest step of each solution", lambda g: g.weakest()[0]),
    ):
        drawn = False
        for group, color in zip(groups, colors):
            values = values_of(group)
            if values.size:
                style = (
                    {"histtype": "step", "linewidth": 1.5} if outline else {"alpha": 0.55 if len(groups) > 1 else 0.8}
                )
                axes.hist(
                    values, bins=edges, color=color, label=f"{matplotlib_safe(group.label)} (n={values.size})", **style
                )
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
    caption = (
        f"Step rewards: all {steps} steps (left) and the weakest step of each of {solutions} solutions "
        "(right), on [0, 1]; the dotted line is 0.5."
    )
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
    caption = (
        f"Step reward by step number: the mean (line) and the interquartile band (25th to 75th percentile) "
        f"of the step rewards at each step, over the solutions that have that many steps (bars below). "
        f"Steps are shown while at least {least} solutions reach them"
    )
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
        axes.bar(
            counts - 0.4 + width * (offset + 0.5),
            tally,
            width=width,
            color=color,
            alpha=0.8,
            label=f"{matplotlib_safe(group.label)} (n={len(group.rewards)})",
        )
    low = 0 if any(np.any(group.lengths == 0) for group in groups) else 1
    axes.set_xlim(low - 0.6, longest + 0.6)
    if longest - low <= 30:
        axes.set_xticks(range(low, longest + 1))
    axes.set_xlabel("steps in the solution")
    axes.set_ylabel("solutions")
    axes.legend(fontsize="small")
    set_title(axes, label, "steps per solution")
    means = [(group.label, number(float(group.lengths.mean()))) for group in groups if len(group.rewards)]
    mean_text = (
        f"{means[0][1]} steps on average"
        if len(means) == 1
        else "mean: " + ", ".join(f"{name} {value}" for name, value in means)
    )
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


def weakest_examples(
    scored: pa.Table, groups: list[Solutions], count: int, separator: str, multi: bool = False
) -> dict[str, list[Example]]:
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
                source = first_of(
                    row.get("steps"),
                    row.get("response"),
                    *(row.get(column) for column in ("conversations", "messages")),
                )
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
            examples.append(
                Example(values, texts, steps=list(zip(steps or [""] * len(rewards), rewards.tolist())), weakest=weakest)
            )
        heading = (
            "Solutions with the weakest steps"
            if group.label == "solutions"
            else f"{group.label.capitalize()} solutions with the weakest steps"
        )
        shown[heading] = examples
    return shown


def prm_separator(run: ScoredRun | None) -> str:
    identity = run.manifest.get("model") if run is not None and isinstance(run.manifest.get("model"), dict) else {}
    separator = identity.get("step_separator")
    return separator if isinstance(separator, str) and separator else DEFAULT_STEP_SEPARATOR


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
        items.append(
            f'<li value="{index + 1}"{css}><span class="reward">{html.escape(number(reward))}</span>'
            f"{html.escape(shorten(text, EXAMPLE_STEP_CHARS))}</li>"
        )
    more = len(steps) - len(shown)
    note = f'<p class="note">{more} more steps not shown</p>' if more > 0 else ""
    return f'<ol class="steps">{"".join(items)}</ol>{note}'


def comparison_groups(comparison: Comparison, scored: list[pa.Table] | None = None) -> list[list[Solutions]]:
    """Per model, its PRM solutions (one group per side of a pair table), labelled with the model;
    an empty list for a model with no step rewards."""
    scored = scored or [scored_rows(run.table, summary) for run, summary in zip(comparison.runs, comparison.summaries)]
    per_model = []
    for label, table, summary in zip(comparison.labels, scored, comparison.summaries):
        groups = prm_solutions(table) if unit_of(summary["kind"]) == "steps" else []
        per_model.append(
            [
                Solutions(
                    label if group.label == "solutions" else f"{label}: {group.label}",
                    group.rewards,
                    group.rows,
                    group.items,
                )
                for group in groups
            ]
        )
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
        parts.append(
            html_table(
                ["", *[group.label for group in shown]], step_table_rows([step_statistics(group) for group in shown])
            )
        )
    missing = [
        f"{label} ({kind_name(kind)})" for label, kind, groups in zip(comparison.labels, kinds, per_model) if not groups
    ]
    if missing:
        parts.append(
            f'<p class="note">Step rewards apply to process reward models only; this part does not apply '
            f"to {html.escape(', '.join(missing))}.</p>"
        )
    return "\n".join(parts)
