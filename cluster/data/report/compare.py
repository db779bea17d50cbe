"""Comparing several outputs of the same corpus: their labels, rows matched across them, and how the
models agree on the rows they share."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.core.errors import InvalidInput
from cluster.data.metrics import Bootstrap, column_values, list_values, summarize
from cluster.data.report.facts import first_of
from cluster.data.report.kinds import with_kind
from cluster.data.report.load import ScoredRun

SOURCE_KEYS = ("source_file", "source_row")
FEW_COMMON_ROWS = 0.9  # warn when two outputs share fewer than this share of the larger one's rows


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
    result: dict = {
        "common_rows": len(in_a),
        "rows": int(both.sum()),
        "same_winner": float(np.mean(wins_a[both] == wins_b[both])) if both.any() else None,
    }
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
    return {
        "common_rows": len(in_a),
        "rows": int(keep.sum()),
        "pearson": pearson(scores_a[keep], scores_b[keep]),
        "spearman": spearman(scores_a[keep], scores_b[keep]),
    }


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
            warnings.append(
                f"{a} and {b} were run on different input files ({a}: {', '.join(inputs_a)}; "
                f"{b}: {', '.join(inputs_b)}): they may not be the same corpus."
            )
        in_a, in_b, note = align_rows(run_a.table, run_b.table)
        if note:
            warnings.append(f"{a} and {b}: {note}.")
        larger = max(run_a.table.num_rows, run_b.table.num_rows)
        if larger and len(in_a) < FEW_COMMON_ROWS * larger:
            warnings.append(
                f"{a} and {b} have {len(in_a)} rows in common ({a}: {run_a.table.num_rows} rows, "
                f"{b}: {run_b.table.num_rows}): not the same corpus, or one run is incomplete; their "
                "agreement is over the common rows only."
            )
        if layouts[a] == "pairs":
            agreements.append((a, b, pair_agreement(run_a.table, run_b.table, in_a, in_b, boot)))
        else:
            agreements.append((a, b, score_agreement(run_a.table, run_b.table, in_a, in_b)))
    return Comparison(labels, runs, summaries, agreements, warnings)


def recorded_inputs(run: ScoredRun) -> list[str] | None:
    inputs = first_of(run.run.get("inputs"), run.manifest.get("inputs"))
    return [str(name) for name in inputs] if isinstance(inputs, list) else None
