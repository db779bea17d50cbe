"""Accuracy and score statistics over a scored-rows table (the pipeline's output).

`summarize(table)` returns a plain, JSON-serializable dict; `format_summary(summary)` renders it for a
terminal. The table is the pipeline's: the user's columns carried through (often `subset`) plus the
output columns of one of these layouts:

- plain rows:            score, truncated
- RM pairs:              chosen_score, rejected_score, margin, chosen_wins, truncated
- RM multi-response:     chosen_scores[k], rejected_scores[m], margins[k*m], margin, win_rate, chosen_wins, truncated
- critic pairs:          prob_chosen, margin (log-odds, may be +-inf), chosen_wins, truncated
- critic multi-response: probs_chosen[k*m], margins[k*m], margin, win_rate, chosen_wins, truncated

A row whose `chosen_wins` (pairs) or `score` (plain rows) is null errored upstream: it is counted as
`skipped` and left out of every other number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# RewardBench v1 sections, from allenai/reward-bench `rewardbench/constants.py` (SUBSET_MAPPING),
# read at commit a32e272b3e018467f742a1b4d18c4cc3d0317d31.
REWARDBENCH_SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": (
        "mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut", "llmbar-adver-manual",
    ),
    "Safety": (
        "refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond", "donotanswer",
    ),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
SECTION_OF_REWARDBENCH_SUBSET = {
    subset: section for section, subsets in REWARDBENCH_SECTIONS.items() for subset in subsets
}
# Official weighting quirks, from the same file and `rewardbench/utils.py::calculate_scores_per_section`:
# a section score there is the per-subset accuracies weighted by the fixed EXAMPLE_COUNTS table, not
# by the rows actually scored. The two agree for every subset but one: EXAMPLE_COUNTS lists math-prm as
# 984 ("actual length 447, upweighting to be equal to code", i.e. 6 x 164 HumanEvalPack rows), so the
# official Reasoning is (math-prm + mean of the six hep-*) / 2. We follow "weighted by the example
# counts present in the table" instead, so on the full data our Reasoning weights math-prm 447 : 984
# against code and can differ from the leaderboard. (The stored EXAMPLE_COUNTS also has the two xstest
# counts the other way round from some copies of it; with counts taken from the table that cannot
# matter.) The overall RewardBench score is the unweighted mean of the sections.

RM_BENCH_STYLES = 3  # concise, detailed plain, detailed markdown: RM-Bench's k = m = 3
MISSING_SUBSET = "(missing)"  # key for rows whose subset is null


def summarize(table: pa.Table) -> dict:
    """Counts, accuracies, benchmark sections and score statistics of a scored-rows table."""
    if "chosen_wins" in table.column_names:
        return summarize_pairs(table)
    return summarize_scores(table)


# ---------------------------------------------------------------- pairs


def summarize_pairs(table: pa.Table) -> dict:
    scored_mask = valid_mask(table, "chosen_wins")
    scored = table.filter(pa.array(scored_mask))
    row_accuracy = pair_row_accuracy(scored)
    summary: dict = {
        "rows": table.num_rows,
        "kind": "pairs",
        "scorer": pair_scorer(table),
        "scored": scored.num_rows,
        "skipped": int(table.num_rows - scored.num_rows),
        "truncated": count_true(table, "truncated"),
        "accuracy": mean_or_none(row_accuracy),
        "margin": describe(column_values(scored, "margin") if "margin" in scored.column_names else np.array([])),
    }
    subsets = subset_labels(scored)
    if subsets is not None:
        summary["per_subset"] = per_subset_accuracy(row_accuracy, subsets, all_labels=subset_labels(table))
        sections = rewardbench_sections(summary["per_subset"], all_labels=subset_labels(table))
        if sections is not None:
            summary["rewardbench"] = sections
    matrices = rm_bench_matrices(scored)
    if matrices is not None:
        summary["rm_bench"] = rm_bench_scores(matrices)
        if subsets is not None:
            summary["rm_bench_per_subset"] = {
                name: rm_bench_scores(matrices[subsets == name]) for name in sorted(set(subsets))
            }
    reward_scores = pair_reward_scores(scored)
    if reward_scores is not None:  # reward models only: critics give no per-response score
        summary["score_stats"] = describe(reward_scores)
    return summary


def pair_scorer(table: pa.Table) -> str:
    """"critic" for a pairwise judge's table (verdict probabilities), else "reward_model"."""
    critic_columns = {"prob_chosen", "probs_chosen"}
    return "critic" if critic_columns & set(table.column_names) else "reward_model"


def pair_row_accuracy(scored: pa.Table) -> np.ndarray:
    """A row's accuracy: its share of winning comparisons for multi-response rows, else 1/0.

    `chosen_wins` already encodes "margin > 0, ties lose" (and prob_chosen > 0.5 for critics).
    """
    if "win_rate" in scored.column_names:
        return column_values(scored, "win_rate")
    return column_values(scored, "chosen_wins")


def per_subset_accuracy(row_accuracy: np.ndarray, subsets: np.ndarray, all_labels: np.ndarray) -> dict:
    """{subset: {"rows": scored rows, "accuracy": mean row accuracy}}, sorted by name.

    `subsets` labels the scored rows; `all_labels` (skipped rows included) keeps a subset whose
    rows all errored, with rows 0 and accuracy None, instead of silently dropping it.
    """
    per_subset = {}
    for name in sorted(set(all_labels)):
        in_subset = subsets == name
        per_subset[name] = {"rows": int(in_subset.sum()), "accuracy": mean_or_none(row_accuracy[in_subset])}
    return per_subset


def rewardbench_sections(per_subset: dict, all_labels: np.ndarray) -> dict | None:
    """RewardBench section scores, or None unless every subset in the table is a RewardBench one.

    A section score is its subsets' accuracies weighted by their scored rows (see the note on the
    official weighting above); a section with no rows is omitted, not reported as 0.
    """
    if not all(label in SECTION_OF_REWARDBENCH_SUBSET for label in all_labels):
        return None
    sections = {}
    for section, section_subsets in REWARDBENCH_SECTIONS.items():
        present = [per_subset[name] for name in section_subsets if name in per_subset and per_subset[name]["rows"]]
        if present:
            weighted = sum(entry["accuracy"] * entry["rows"] for entry in present)
            sections[section] = weighted / sum(entry["rows"] for entry in present)
    if not sections:
        return None
    sections["Score"] = sum(sections.values()) / len(sections)
    return sections


def rm_bench_matrices(scored: pa.Table) -> np.ndarray | None:
    """Per row the 3x3 win matrix M[i][j] = margins[i*3 + j] > 0, or None if the rows are not RM-Bench's.

    i indexes the chosen responses and j the rejected ones, both in RM-Bench's style order
    (0 concise, 1 detailed plain, 2 detailed markdown). A critic table has no per-side lists, so
    for it 9 margins per row is taken to mean 3 x 3.
    """
    if "margins" not in scored.column_names or scored.num_rows == 0:
        return None
    if not lists_all_have_length(scored, "margins", RM_BENCH_STYLES * RM_BENCH_STYLES):
        return None
    for side in ("chosen_scores", "rejected_scores"):
        if side in scored.column_names and not lists_all_have_length(scored, side, RM_BENCH_STYLES):
            return None
    margins = list_values(scored, "margins").reshape(-1, RM_BENCH_STYLES, RM_BENCH_STYLES)
    return margins > 0  # strict, as RM-Bench's `chosen > rejected`: ties lose; NaN loses too


def rm_bench_scores(matrices: np.ndarray) -> dict:
    """RM-Bench easy / normal / hard accuracies over rows' 3x3 win matrices, and their mean.

    Checked against THU-KEG/RM-Bench README.md ("how to compute the accuracy", the copy of
    scripts/utils.py::compute_accuracy): rows are chosen, columns rejected, cell = chosen > rejected,
    the matrix is averaged over records, then hard = mean of np.triu(acc, 1) (upper-right, chosen
    less fancy than rejected), normal = mean of the diagonal, easy = mean of np.tril(acc, -1). Averaging
    each row's triangle and then the rows, as here, is the same number. "total" is the mean of the
    three, as in reward-bench v2's rm_bench_accuracy ("rm_bench_avg"). The RM-Bench paper's per-domain
    table averages domains (chat, code, math, safety); use rm_bench_per_subset for that.
    """
    if len(matrices) == 0:
        return {"rows": 0, "easy": None, "normal": None, "hard": None, "total": None}
    mean_matrix = matrices.mean(axis=0)
    upper = np.triu_indices(RM_BENCH_STYLES, k=1)
    lower = np.tril_indices(RM_BENCH_STYLES, k=-1)
    easy = float(mean_matrix[lower].mean())
    normal = float(np.diag(mean_matrix).mean())
    hard = float(mean_matrix[upper].mean())
    return {"rows": len(matrices), "easy": easy, "normal": normal, "hard": hard, "total": (easy + normal + hard) / 3}


def pair_reward_scores(scored: pa.Table) -> np.ndarray | None:
    """Every chosen and rejected score of a reward-model pair table, pooled; None for critics."""
    for chosen, rejected, values_of in (
        ("chosen_score", "rejected_score", column_values),
        ("chosen_scores", "rejected_scores", list_values),
    ):
        if chosen in scored.column_names and rejected in scored.column_names:
            return np.concatenate([values_of(scored, chosen), values_of(scored, rejected)])
    return None


# ---------------------------------------------------------------- plain scores


def summarize_scores(table: pa.Table) -> dict:
    scored_mask = valid_mask(table, "score")
    scored = table.filter(pa.array(scored_mask))
    summary: dict = {
        "rows": table.num_rows,
        "kind": "scores",
        "scored": scored.num_rows,
        "skipped": int(table.num_rows - scored.num_rows),
        "truncated": count_true(table, "truncated"),
        "score_stats": describe(column_values(scored, "score")),
    }
    subsets = subset_labels(scored)
    if subsets is not None:
        scores = column_values(scored, "score")
        summary["per_subset"] = {
            name: describe(scores[subsets == name]) for name in sorted(set(subset_labels(table)))
        }
    return summary


# ---------------------------------------------------------------- statistics


def describe(values: np.ndarray) -> dict:
    """count, mean, std, min, p5, p50, p95, max over the finite values; `nonfinite` counts the rest.

    std is the population std (ddof=0): the spread of exactly these scores, which is what a reward
    normalizer fitted on them divides by. Percentiles interpolate linearly (numpy's default).
    Infinite values (a critic's log-odds at probability 0 or 1) are counted, not averaged: one
    +inf would make the mean infinite and an inf/-inf pair would make it NaN, and neither is JSON.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    stats: dict = {"count": int(finite.size), "nonfinite": int(values.size - finite.size)}
    if finite.size == 0:
        return stats | dict.fromkeys(("mean", "std", "min", "p5", "p50", "p95", "max"))
    p5, p50, p95 = np.percentile(finite, [5, 50, 95])
    return stats | {
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "p5": float(p5),
        "p50": float(p50),
        "p95": float(p95),
        "max": float(finite.max()),
    }


def mean_or_none(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


# ---------------------------------------------------------------- arrow helpers


def valid_mask(table: pa.Table, column: str) -> np.ndarray:
    """True where the row has a value in `column` (null marks a row that errored)."""
    return pc.is_valid(table[column]).to_numpy(zero_copy_only=False)


def count_true(table: pa.Table, column: str) -> int:
    if column not in table.column_names:
        return 0
    return int(pc.sum(table[column].cast(pa.int64())).as_py() or 0)


def column_values(table: pa.Table, column: str) -> np.ndarray:
    """A numeric or boolean column as float64 (nulls become NaN)."""
    return table[column].cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def list_values(table: pa.Table, column: str) -> np.ndarray:
    """A list<float64> column's values, row after row, flattened into one float64 array."""
    flat = pc.list_flatten(table[column])
    return flat.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def lists_all_have_length(table: pa.Table, column: str, length: int) -> bool:
    lengths = pc.list_value_length(table[column]).to_numpy(zero_copy_only=False)
    return bool(np.all(lengths == length))


def subset_labels(table: pa.Table) -> np.ndarray | None:
    """Each row's subset as a string (object array), or None when the table has no subset column."""
    if "subset" not in table.column_names:
        return None
    return np.array([MISSING_SUBSET if value is None else str(value) for value in table["subset"].to_pylist()],
                    dtype=object)


# ---------------------------------------------------------------- text rendering


def format_summary(summary: dict) -> str:
    """A plain-text rendering of `summarize`'s dict for terminals: overall, per subset, sections."""
    blocks = [format_overall(summary)]
    if "per_subset" in summary:
        blocks.append(format_per_subset(summary))
    if "rewardbench" in summary:
        blocks.append(format_table("RewardBench", ["section", "accuracy"],
                                   [[name, percent(value)] for name, value in summary["rewardbench"].items()]))
    if "rm_bench" in summary:
        blocks.append(format_rm_bench(summary))
    if "score_stats" in summary:
        blocks.append(format_stats("scores" if summary["kind"] == "scores" else "scores (chosen + rejected)",
                                   summary["score_stats"]))
    if summary.get("margin"):
        margin_meaning = "log-odds chosen wins" if summary.get("scorer") == "critic" else "chosen - rejected"
        blocks.append(format_stats(f"margin ({margin_meaning})", summary["margin"]))
    return "\n\n".join(blocks)


def format_overall(summary: dict) -> str:
    lines = [
        f"rows {summary['rows']}  ({summary['kind']}; scored {summary['scored']}, "
        f"skipped {summary['skipped']}, truncated {summary['truncated']})"
    ]
    if summary["kind"] == "pairs":
        lines.append(f"accuracy {percent(summary['accuracy'])}")
    return "\n".join(lines)


def format_per_subset(summary: dict) -> str:
    if summary["kind"] == "pairs":
        rows = [[name, str(entry["rows"]), percent(entry["accuracy"])] for name, entry in summary["per_subset"].items()]
        return format_table("per subset", ["subset", "rows", "accuracy"], rows)
    rows = [[name, str(stats["count"]), number(stats["mean"]), number(stats["std"]), number(stats["p50"])]
            for name, stats in summary["per_subset"].items()]
    return format_table("per subset", ["subset", "rows", "mean", "std", "p50"], rows)


def format_rm_bench(summary: dict) -> str:
    header = ["", "rows", "easy", "normal", "hard", "total"]
    entries = [("all", summary["rm_bench"])] + list(summary.get("rm_bench_per_subset", {}).items())
    rows = [[name, str(scores["rows"])] + [percent(scores[key]) for key in ("easy", "normal", "hard", "total")]
            for name, scores in entries]
    return format_table("RM-Bench (3x3 style matrix)", header, rows)


def format_stats(title: str, stats: dict) -> str:
    keys = ["count", "mean", "std", "min", "p5", "p50", "p95", "max"]
    row = [str(stats["count"])] + [number(stats[key]) for key in keys[1:]]
    if stats.get("nonfinite"):
        keys, row = keys + ["non-finite"], row + [str(stats["nonfinite"])]
    return format_table(title, keys, [row])


def format_table(title: str, header: list[str], rows: Iterable[list[str]]) -> str:
    """Left-aligned first column, right-aligned numbers, widths fitted to the content."""
    rows = [header] + list(rows)
    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
    lines = [title]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"
