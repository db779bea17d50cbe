"""Which kind of model scored a table (reward model, critic, PRM, pointwise judge), read from its
columns and summary, and the kind's names on the page."""

from __future__ import annotations

import pyarrow as pa

from cluster.data.report.load import ScoredRun
from cluster.kinds import KINDS, report_text, unit_of

# the kinds whose columns a table shows (a reward model's and a critic's: the summary says)
PRM, POINTWISE = (next(k.name for k in KINDS.values() if k.unit == unit) for unit in ("steps", "rating"))

STEP_COLUMNS = ("step_rewards", "chosen_step_rewards", "rejected_step_rewards")  # a process reward model's
RATING_COLUMNS = ("rating_probs", "rating", "chosen_rating", "rejected_rating", "chosen_ratings", "rejected_ratings")


def table_kind(table: pa.Table, summary_kind: str | None = None, saved: dict | None = None) -> str:
    """The model kind of a scored table: "prm" when it holds step rewards, "pointwise" when it holds a
    judge's ratings, else what the summary (or summary.json) says ("reward", "critic", ...)."""
    columns = set(table.column_names)
    if unit_of(summary_kind) in ("steps", "rating"):
        return summary_kind
    if columns & set(STEP_COLUMNS):
        return PRM
    if columns & set(RATING_COLUMNS):
        return POINTWISE
    saved_kind = (saved or {}).get("kind")
    if unit_of(summary_kind) in (None, "reward") and unit_of(saved_kind) in ("steps", "rating"):
        return saved_kind
    return summary_kind or "reward"


def with_kind(summary: dict, table: pa.Table, run: ScoredRun | None = None) -> dict:
    """`summary` with its kind corrected to the table's (metrics may only know reward and critic)."""
    kind = table_kind(table, summary.get("kind"), run.saved if run is not None else None)
    return summary if kind == summary.get("kind") else {**summary, "kind": kind}


def kind_name(kind: str | None) -> str:
    return KINDS[kind].report.name if kind in KINDS else str(kind)


def score_axis_label(kind: str | None, aggregate: str | None = None) -> str:
    return report_text(kind).score_axis.format(aggregate=aggregate or "aggregate")
