"""Accuracy and score statistics over a scored-rows table (the pipeline's output).

`summarize(table)` returns a plain, JSON-serializable dict; `format_summary(summary)` renders it for a
terminal. The table is the pipeline's: the user's columns carried through (often `subset`) plus the
output columns of one of these layouts:

- plain rows:            score, truncated
- RM pairs:              chosen_score, rejected_score, margin, chosen_wins, truncated
- RM multi-response:     chosen_scores[k], rejected_scores[m], margins[k*m], margin, win_rate, chosen_wins, truncated
- critic pairs:          prob_chosen, margin (log-odds, may be +-inf), chosen_wins, truncated
- critic multi-response: probs_chosen[k*m], margins[k*m], margin, win_rate, chosen_wins, truncated
- process reward model (prm): score (the aggregate), step_rewards[n], num_steps, weakest_step,
  weakest_step_reward, truncated; its pairs: a reward model's columns plus chosen_step_rewards and
  rejected_step_rewards (lists of lists with several responses per side)
- pointwise judge: score (expected rating), rating (the most probable), rating_probs[scale], truncated;
  its pairs: a reward model's columns (the expected ratings) plus chosen_rating / rejected_rating
  (chosen_ratings / rejected_ratings with several responses per side)

A row whose `chosen_wins` (pairs) or `score` (plain rows) is null errored upstream: it is counted as
`skipped` and left out of every other number.

The dict says what was measured in two keys: `kind`, the model kind ("reward"; "critic" when the
table has verdict probabilities `prob_chosen`/`probs_chosen`; "prm" when it has step rewards;
"pointwise" when it has ratings), and `layout`, the table's shape ("pairs" when it has
`chosen_wins`, else "scores"). A prm's summary adds `step_stats`, a pointwise judge's `rating_stats`.
Accuracies carry 95% bootstrap intervals (`accuracy_ci`, per-subset `ci`, `rewardbench_ci`, RM-Bench
`ci`): rows resampled with replacement, seeded, percentile interval; see `Bootstrap`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.kinds import KINDS, unit_of

# RewardBench v1 sections, from allenai/reward-bench `rewardbench/constants.py` (SUBSET_MAPPING),
# read at commit a32e272b3e018467f742a1b4d18c4cc3d0317d31.
REWARDBENCH_SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": (
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ),
    "Safety": (
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
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
RM_BENCH_LEVELS = ("easy", "normal", "hard", "total")
MISSING_SUBSET = "(missing)"  # key for rows whose subset is null
CRITIC_COLUMNS = frozenset({"prob_chosen", "probs_chosen"})
PRM_COLUMNS = frozenset({"step_rewards", "chosen_step_rewards"})
POINTWISE_COLUMNS = frozenset({"rating_probs", "chosen_rating", "chosen_ratings"})
WEAK_STEP = 0.5  # a step whose reward is below this is more likely wrong than right (step_stats)

# Bootstrap intervals: resamples, two-sided level, seed (fixed, so a report is reproducible).
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


def summarize(
    table: pa.Table, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED, default_kind: str = "reward"
) -> dict:
    """Counts, accuracies (with bootstrap intervals), benchmark sections and score statistics.

    `resamples=0` leaves the intervals out (their keys hold None, `rewardbench_ci` is empty).
    `default_kind`: the kind of a table with no result columns to tell it by (every row errored).
    """
    if "chosen_wins" in table.column_names:
        return summarize_pairs(table, resamples=resamples, seed=seed)
    return summarize_scores(table, default_kind)


RESULT_COLUMNS = frozenset({"score", "chosen_wins"})  # a table holding one of these has scored rows


def model_kind(table: pa.Table, default: str = "reward") -> str:
    """The model kind a table's columns show: "critic" (verdict probabilities), "prm" (step
    rewards), "pointwise" (ratings), else "reward"; `default` for a table with no result columns."""
    columns = set(table.column_names)
    if CRITIC_COLUMNS & columns:
        return "critic"
    if PRM_COLUMNS & columns:
        return "prm"
    if POINTWISE_COLUMNS & columns:
        return "pointwise"
    return "reward" if RESULT_COLUMNS & columns else default


# ---------------------------------------------------------------- pairs


def summarize_pairs(table: pa.Table, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    scored_mask = valid_mask(table, "chosen_wins")
    scored = table.filter(pa.array(scored_mask))
    row_accuracy = pair_row_accuracy(scored)
    boot = Bootstrap(resamples, seed)
    summary: dict = {
        "rows": table.num_rows,
        "kind": model_kind(table),
        "layout": "pairs",
        "scored": scored.num_rows,
        "skipped": int(table.num_rows - scored.num_rows),
        "truncated": count_true(table, "truncated"),
        "accuracy": mean_or_none(row_accuracy),
        "accuracy_ci": boot.interval(boot.means(row_accuracy, stream="all")),
        "margin": describe(column_values(scored, "margin") if "margin" in scored.column_names else np.array([])),
        "bootstrap": boot.description(),
    }
    subsets = subset_labels(scored)
    if subsets is not None:
        all_labels = subset_labels(table)
        replicates = {
            name: boot.means(row_accuracy[subsets == name], stream=f"subset:{name}") for name in sorted(set(all_labels))
        }
        summary["per_subset"] = per_subset_accuracy(row_accuracy, subsets, all_labels=all_labels)
        for name, entry in summary["per_subset"].items():
            entry["ci"] = boot.interval(replicates[name])
        sections = rewardbench_sections(summary["per_subset"], all_labels=all_labels)
        if sections is not None:
            summary["rewardbench"] = sections
            summary["rewardbench_ci"] = rewardbench_section_intervals(summary["per_subset"], replicates, boot)
    matrices = rm_bench_matrices(scored)
    if matrices is not None:
        summary["rm_bench"] = rm_bench_scores(matrices, boot, stream="all")
        if subsets is not None:
            summary["rm_bench_per_subset"] = {
                name: rm_bench_scores(matrices[subsets == name], boot, stream=f"subset:{name}")
                for name in sorted(set(subsets))
            }
    reward_scores = pair_reward_scores(scored)
    if reward_scores is not None:  # reward models only: critics give no per-response score
        summary["score_stats"] = describe(reward_scores)
    if unit_of(summary["kind"]) == "steps":  # both sides' solutions pooled
        summary["step_stats"] = step_stats(
            solution_steps(scored, "chosen_step_rewards") + solution_steps(scored, "rejected_step_rewards")
        )
    if unit_of(summary["kind"]) == "rating":
        summary["rating_stats"] = {side: rating_counts(scored, f"{side}_rating") for side in ("chosen", "rejected")}
    return summary


def pair_row_accuracy(scored: pa.Table) -> np.ndarray:
    """A row's accuracy: its share of winning comparisons for multi-response rows, else 1/0.

    `chosen_wins` already encodes "margin > 0, ties lose" (and prob_chosen > 0.5 for critics).
    """
    if "win_rate" in scored.column_names:
        return column_values(scored, "win_rate")
    return column_values(scored, "chosen_wins")


def per_subset_accuracy(row_accuracy: np.ndarray, subsets: np.ndarray, all_labels: np.ndarray) -> dict:
    """{subset: {"rows": scored rows, "accuracy": mean row accuracy}}, sorted by name (summarize adds "ci").

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


def rewardbench_section_intervals(per_subset: dict, replicates: dict[str, np.ndarray], boot: Bootstrap) -> dict:
    """{section: [lo, hi], "Score": [lo, hi]}: a stratified bootstrap.

    Each subset's rows are resampled within the subset (its replicate accuracies come from
    `replicates`), so every replicate keeps the table's rows per subset and a section replicate is
    weighted exactly as `rewardbench_sections` weights the point estimate; the Score replicate is
    the mean of the section replicates.
    """
    section_replicates = {}
    for section, section_subsets in REWARDBENCH_SECTIONS.items():
        present = [name for name in section_subsets if name in per_subset and per_subset[name]["rows"]]
        if present and all(len(replicates[name]) for name in present):
            rows = np.array([per_subset[name]["rows"] for name in present], dtype=np.float64)
            stacked = np.stack([replicates[name] for name in present], axis=1)  # (resamples, subsets)
            section_replicates[section] = stacked @ rows / rows.sum()
    intervals = {section: boot.interval(values) for section, values in section_replicates.items()}
    if section_replicates:
        intervals["Score"] = boot.interval(np.mean(np.stack(list(section_replicates.values())), axis=0))
    return intervals


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


def rm_bench_scores(matrices: np.ndarray, boot: Bootstrap | None = None, stream: str = "all") -> dict:
    """RM-Bench easy / normal / hard accuracies over rows' 3x3 win matrices, and their mean.

    Checked against THU-KEG/RM-Bench README.md ("how to compute the accuracy", the copy of
    scripts/utils.py::compute_accuracy): rows are chosen, columns rejected, cell = chosen > rejected,
    the matrix is averaged over records, then hard = mean of np.triu(acc, 1) (upper-right, chosen
    less fancy than rejected), normal = mean of the diagonal, easy = mean of np.tril(acc, -1). Averaging
    each row's triangle and then the rows, as here, is the same number. "total" is the mean of the
    three, as in reward-bench v2's rm_bench_accuracy ("rm_bench_avg"). The RM-Bench paper's per-domain
    table averages domains (chat, code, math, safety); use rm_bench_per_subset for that.

    With `boot`, "ci" holds {level: [lo, hi]}: rows resampled, each replicate's total the mean of
    its own easy, normal and hard.
    """
    if len(matrices) == 0:
        scores: dict = {"rows": 0, "easy": None, "normal": None, "hard": None, "total": None}
        return scores | ({"ci": dict.fromkeys(RM_BENCH_LEVELS)} if boot is not None else {})
    per_row = rm_bench_row_levels(matrices)  # (rows, 3): each row's easy, normal, hard
    easy, normal, hard = (float(value) for value in per_row.mean(axis=0))
    scores = {"rows": len(matrices), "easy": easy, "normal": normal, "hard": hard, "total": (easy + normal + hard) / 3}
    if boot is not None:
        replicates = boot.means(per_row, stream=f"rm_bench:{stream}")  # (resamples, 3)
        if len(replicates):
            replicates = np.concatenate([replicates, replicates.mean(axis=1, keepdims=True)], axis=1)
        scores["ci"] = {
            level: boot.interval(replicates[:, i] if len(replicates) else replicates)
            for i, level in enumerate(RM_BENCH_LEVELS)
        }
    return scores


def rm_bench_row_levels(matrices: np.ndarray) -> np.ndarray:
    """Per row of 3x3 win matrices: the mean of its lower triangle (easy), diagonal (normal) and
    upper triangle (hard). The triangles have equal sizes, so averaging these over rows gives the
    same numbers as RM-Bench's mean matrix."""
    wins = matrices.astype(np.float64)
    lower = np.tril_indices(RM_BENCH_STYLES, k=-1)
    upper = np.triu_indices(RM_BENCH_STYLES, k=1)
    return np.stack(
        [
            wins[:, lower[0], lower[1]].mean(axis=1),
            np.diagonal(wins, axis1=1, axis2=2).mean(axis=1),
            wins[:, upper[0], upper[1]].mean(axis=1),
        ],
        axis=1,
    )


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


def summarize_scores(table: pa.Table, default_kind: str = "reward") -> dict:
    """Score statistics of a plain-rows table (a reward model's, a prm's or a pointwise judge's:
    critics only judge pairs).

    A table with no `score` column at all (a folder whose every row errored) counts its rows as skipped.
    """
    if "score" in table.column_names:
        scored = table.filter(pa.array(valid_mask(table, "score")))
        scores = column_values(scored, "score")
    else:
        scored, scores = table.slice(0, 0), np.array([])
    summary: dict = {
        "rows": table.num_rows,
        "kind": model_kind(table, default_kind),
        "layout": "scores",
        "scored": scored.num_rows,
        "skipped": int(table.num_rows - scored.num_rows),
        "truncated": count_true(table, "truncated"),
        "score_stats": describe(scores),
    }
    subsets = subset_labels(scored)
    if subsets is not None:
        summary["per_subset"] = {name: describe(scores[subsets == name]) for name in sorted(set(subset_labels(table)))}
    if unit_of(summary["kind"]) == "steps":
        summary["step_stats"] = step_stats(solution_steps(scored, "step_rewards"))
    if unit_of(summary["kind"]) == "rating":
        summary["rating_stats"] = {**rating_counts(scored, "rating"), "mean_probs": mean_probs(scored)}
    return summary


# ---------------------------------------------------------------- process reward models, pointwise judges


def solution_steps(scored: pa.Table, column: str) -> list[list[float]]:
    """Each solution's step rewards from a list column (a list of lists: several solutions per row)."""
    if column not in scored.column_names:
        return []
    out = []
    for value in scored[column].to_pylist():
        if value is None:
            continue
        out += value if value and isinstance(value[0], list) else [value]
    return out


def step_stats(solutions: list[list[float]], threshold: float = WEAK_STEP) -> dict:
    """A prm's step statistics: solutions, steps per solution, every step reward, each solution's
    weakest step reward, and how many solutions have a step below `threshold` (their weakest)."""
    solutions = [s for s in solutions if s]
    weakest = np.array([min(s) for s in solutions], dtype=np.float64)
    below = int((weakest < threshold).sum())
    return {
        "solutions": len(solutions),
        "steps": int(sum(len(s) for s in solutions)),
        "steps_per_solution": describe(np.array([len(s) for s in solutions], dtype=np.float64)),
        "step_rewards": describe(np.array([r for s in solutions for r in s], dtype=np.float64)),
        "weakest_step_rewards": describe(weakest),
        "weak_threshold": threshold,
        "weak_solutions": below,
        "weak_share": below / len(solutions) if solutions else None,
    }


def rating_counts(scored: pa.Table, column: str) -> dict:
    """A pointwise judge's most probable ratings: {"counts": {rating: rows}} in rating order, and
    their mean; a list column (several responses per side) counts every response."""
    plural = column + "s"
    if column in scored.column_names:
        values = column_values(scored, column)
    elif plural in scored.column_names:
        values = list_values(scored, plural)
    else:
        values = np.array([])
    values = values[np.isfinite(values)]
    distinct, counts = np.unique(values, return_counts=True)
    return {
        "counts": {number_key(v): int(n) for v, n in zip(distinct, counts)},
        "mean": float(values.mean()) if values.size else None,
    }


def mean_probs(scored: pa.Table) -> list[float] | None:
    """The mean probability of each rating of the scale, over the scored rows."""
    if "rating_probs" not in scored.column_names or scored.num_rows == 0:
        return None
    probs = np.array(scored["rating_probs"].to_pylist(), dtype=np.float64)
    return [float(p) for p in probs.mean(axis=0)]


def number_key(value: float) -> str:
    """A rating as a JSON key: 7.0 -> "7", 2.5 -> "2.5"."""
    return f"{float(value):g}"


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


class Bootstrap:
    """Seeded percentile bootstrap of means over rows.

    Resampling n rows with replacement only changes how often each distinct row value is drawn, and
    those counts follow Multinomial(n, share of each distinct value). `means` draws the counts
    directly: the same distribution as drawing row indices, at a cost of resamples x distinct values
    instead of resamples x rows. Accuracy rows have few distinct values (0/1, or j/9 for RM-Bench),
    so 1,000 resamples of 3,000 rows take well under a millisecond.

    Every quantity draws from its own stream, seeded by (seed, its name): intervals do not depend
    on what else was computed, subsets' resamples are independent of each other, and the same
    subset resamples the same way for every model of a comparison.
    """

    MAX_CELLS = 4_000_000  # resamples x distinct values per multinomial draw (memory bound)

    def __init__(
        self, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE
    ):
        self.resamples, self.seed, self.confidence = int(resamples), int(seed), float(confidence)

    def description(self) -> dict:
        return {
            "resamples": self.resamples,
            "confidence": self.confidence,
            "seed": self.seed,
            "method": "percentile; rows resampled with replacement (within each subset for subsets "
            "and RewardBench sections)",
        }

    def rng(self, stream: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(stream.encode("utf-8"))])

    def means(self, values: np.ndarray, stream: str) -> np.ndarray:
        """Replicate means of `values` (rows, or rows x columns resampled together): an array of
        shape (resamples,) or (resamples, columns); empty when there are no rows or no resamples."""
        values = np.asarray(values, dtype=np.float64)
        if len(values) == 0 or self.resamples <= 0:
            return np.empty((0,) + values.shape[1:])
        columns = values.reshape(len(values), -1)
        distinct, counts = np.unique(columns, axis=0, return_counts=True)
        rng, n = self.rng(stream), len(values)
        step = max(1, self.MAX_CELLS // len(distinct))
        replicates = [
            rng.multinomial(n, counts / n, size=min(step, self.resamples - start)) @ distinct / n
            for start in range(0, self.resamples, step)
        ]
        return np.concatenate(replicates).reshape((self.resamples,) + values.shape[1:])

    def interval(self, replicates: np.ndarray) -> list[float] | None:
        """[lo, hi], the central `confidence` share of the replicates; None without replicates."""
        replicates = np.asarray(replicates, dtype=np.float64)
        if replicates.size == 0:
            return None
        tail = 100 * (1 - self.confidence) / 2
        low, high = np.percentile(replicates, [tail, 100 - tail])
        return [float(low), float(high)]


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
    return np.array(
        [MISSING_SUBSET if value is None else str(value) for value in table["subset"].to_pylist()], dtype=object
    )


# ---------------------------------------------------------------- text rendering


def format_summary(summary: dict) -> str:
    """A plain-text rendering of `summarize`'s dict for terminals: overall, per subset, sections.

    Accuracies are percentages with their bootstrap interval in brackets, when the dict has one.
    """
    blocks = [format_overall(summary)]
    if "per_subset" in summary:
        blocks.append(format_per_subset(summary))
    if "rewardbench" in summary:
        intervals = summary.get("rewardbench_ci") or {}
        rows = [[name, percent_ci(value, intervals.get(name))] for name, value in summary["rewardbench"].items()]
        blocks.append(format_table("RewardBench", ["section", "accuracy"], rows))
    if "rm_bench" in summary:
        blocks.append(format_rm_bench(summary))
    if "score_stats" in summary:
        kind = KINDS.get(summary.get("kind"))
        what = kind.score_label if kind else "scores"
        blocks.append(
            format_stats(
                what if summary.get("layout") == "scores" else f"{what} (chosen + rejected)", summary["score_stats"]
            )
        )
    if summary.get("margin"):
        blocks.append(format_stats(f"margin ({margin_meaning(summary.get('kind'))})", summary["margin"]))
    if summary.get("step_stats"):
        blocks.append(format_step_stats(summary["step_stats"]))
    if summary.get("rating_stats"):
        blocks.append(format_rating_stats(summary["rating_stats"]))
    return "\n\n".join(blocks)


KIND_NAMES = {
    "reward": "reward model",
    "critic": "critic",
    "prm": "process reward model",
    "pointwise": "pointwise judge",
}


def margin_meaning(kind: str | None) -> str:
    """What a row's margin is, for this model kind."""
    known = KINDS.get(kind) if isinstance(kind, str) else None
    return known.margin_label if known else KINDS["reward"].margin_label


def format_step_stats(stats: dict) -> str:
    keys = ["count", "mean", "std", "min", "p5", "p50", "p95", "max"]
    rows = [
        [name] + [str(stats[key]["count"])] + [number(stats[key][k]) for k in keys[1:]]
        for name, key in (
            ("steps per solution", "steps_per_solution"),
            ("step reward", "step_rewards"),
            ("weakest step reward", "weakest_step_rewards"),
        )
    ]
    table = format_table(f"steps ({stats['solutions']} solutions, {stats['steps']} steps)", ["", *keys], rows)
    return (
        f"{table}\n  solutions with a step below {stats['weak_threshold']:g}: {stats['weak_solutions']} "
        f"({percent(stats['weak_share'])}%)"
    )


def format_rating_stats(stats: dict) -> str:
    sides = {"": stats} if "counts" in stats else stats
    ratings = sorted({r for side in sides.values() for r in side["counts"]}, key=float)
    rows = [
        [name or "rows", *(str(side["counts"].get(r, 0)) for r in ratings), number(side["mean"])]
        for name, side in sides.items()
    ]
    return format_table("most probable rating", ["", *ratings, "mean"], rows)


def format_overall(summary: dict) -> str:
    kind = KIND_NAMES.get(summary.get("kind"), str(summary.get("kind")))
    lines = [
        f"rows {summary['rows']}  ({kind}, {summary.get('layout')}; scored {summary['scored']}, "
        f"skipped {summary['skipped']}, truncated {summary['truncated']})"
    ]
    if summary.get("layout") == "pairs":
        lines.append(f"accuracy {percent_ci(summary['accuracy'], summary.get('accuracy_ci'))}")
    return "\n".join(lines)


def format_per_subset(summary: dict) -> str:
    if summary.get("layout") == "pairs":
        rows = [
            [name, str(entry["rows"]), percent_ci(entry["accuracy"], entry.get("ci"))]
            for name, entry in summary["per_subset"].items()
        ]
        return format_table("per subset", ["subset", "rows", "accuracy"], rows)
    rows = [
        [name, str(stats["count"]), number(stats["mean"]), number(stats["std"]), number(stats["p50"])]
        for name, stats in summary["per_subset"].items()
    ]
    return format_table("per subset", ["subset", "rows", "mean", "std", "p50"], rows)


def format_rm_bench(summary: dict) -> str:
    header = ["", "rows", *RM_BENCH_LEVELS]
    entries = [("all", summary["rm_bench"])] + list(summary.get("rm_bench_per_subset", {}).items())
    rows = [
        [name, str(scores["rows"])]
        + [percent_ci(scores[key], (scores.get("ci") or {}).get(key)) for key in RM_BENCH_LEVELS]
        for name, scores in entries
    ]
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


def percent(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def percent_ci(value: float | None, interval: list[float] | None, digits: int = 2) -> str:
    """ "71.20 [68.00, 74.10]": a share as a percentage, with its interval when there is one."""
    if value is None or not interval:
        return percent(value, digits)
    low, high = interval
    return f"{percent(value, digits)} [{percent(low, digits)}, {percent(high, digits)}]"


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"
