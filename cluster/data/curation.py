"""Curation recipes on top of score_corpus: `filter_pairs`, `filter_solutions` (a process reward model's
weakest step) and `calibrate` (a reward model's score mean and std, as shaping)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cluster.core.config import ModelSpec
from cluster.core.errors import ConfigError, InvalidInput
from cluster.data.corpus import Layout
from cluster.data.models import resolve_model
from cluster.data.options import ScoringOptions
from cluster.data.resume import read_scores
from cluster.data.scoring import _score_corpus, score_corpus
from cluster.data.stages import ModelStage
from cluster.data.storage import Location, locate
from cluster.kinds import kind_of


def filter_pairs(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    model: ModelSpec | Mapping[str, Any] | str,
    *,
    min_margin: float = 0.0,
    filesystem=None,
    **options: Any,
) -> dict[str, Any]:
    """Keep the preference pairs the model agrees with: chosen beats rejected by more than 0 and by
    at least `min_margin` (for rows with several responses per side, every chosen/rejected pair
    must). Scores go to `output_path` (resumable, as score_corpus); the rows to `kept.parquet` and
    `dropped.parquet` there, with their scores. Rows that could not be scored are in errors.jsonl."""
    summary = score_corpus(input_path, output_path, model, filesystem=filesystem, **options)
    if summary["shape"] != "pairs":
        raise InvalidInput(f"{input_path}: filter_pairs needs preference pairs (prompt + chosen + rejected)")
    out = locate(output_path, filesystem)
    table = read_scores(out)
    margins = (
        table["margins"].to_pylist() if "margins" in table.column_names else [[m] for m in table["margin"].to_pylist()]
    )
    keep = pa.array([all(m > 0 and m >= min_margin for m in row) for row in margins], type=pa.bool_())
    return {**summary, "min_margin": min_margin, **_split_kept(table, keep, out)}


def _split_kept(table: pa.Table, keep: pa.Array, out: Location) -> dict[str, Any]:
    """The rows `keep` marks to kept.parquet, the others to dropped.parquet, in `out`: their counts and files."""
    kept, dropped = table.filter(keep), table.filter(pc.invert(keep))
    out.child("kept.parquet").write(kept)
    out.child("dropped.parquet").write(dropped)
    return {
        "kept": kept.num_rows,
        "dropped": dropped.num_rows,
        "kept_file": out.child("kept.parquet").shown,
        "dropped_file": out.child("dropped.parquet").shown,
    }


def filter_solutions(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    model: ModelSpec | Mapping[str, Any] | str,
    *,
    min_step_reward: float = 0.5,
    overwrite: bool = False,
    filesystem=None,
    **options: Any,
) -> dict[str, Any]:
    """Keep the solutions a process reward model finds no weak step in: every step's reward (the
    weakest step's, `weakest_step_reward`) at least `min_step_reward`. Rows are solutions (prompt +
    steps or response, or conversations); scores go to `output_path` (resumable, as score_corpus);
    the rows to `kept.parquet` and `dropped.parquet` there, with their step rewards. Rows that
    could not be scored are in errors.jsonl. `model` must be a prm (a ModelSpec or its fields)."""
    if (
        isinstance(min_step_reward, bool)
        or not isinstance(min_step_reward, int | float)
        or not 0.0 <= min_step_reward <= 1.0
    ):
        raise ConfigError(
            f"min_step_reward: a step reward is a probability, so a number in [0, 1]; got {min_step_reward!r}"
        )
    opts = ScoringOptions.parse(options)
    spec = resolve_model(model, opts.via_serve)
    if not kind_of(spec).steps:
        raise ConfigError(
            f"filter_solutions needs a process reward model (kind='prm'); model '{spec.name}' is kind {spec.kind!r}"
        )

    def solutions(layout: Layout) -> None:
        if layout.shape == "pairs":
            raise InvalidInput(
                f"{input_path}: filter_solutions keeps or drops single solutions (prompt + steps or "
                "response, or conversations); this corpus holds pairs: use filter_pairs"
            )

    summary = _score_corpus(
        input_path, output_path, spec, overwrite, opts, ModelStage, require=solutions, filesystem=filesystem
    )
    out = locate(output_path, filesystem)
    table = read_scores(out)
    if "weakest_step_reward" in table.column_names:
        keep = pc.fill_null(pc.greater_equal(table["weakest_step_reward"], pa.scalar(float(min_step_reward))), False)
    else:  # nothing scored
        keep = pa.array([False] * table.num_rows, pa.bool_())
    return {**summary, "min_step_reward": min_step_reward, **_split_kept(table, keep, out)}


def calibrate(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    model: ModelSpec | Mapping[str, Any] | str,
    *,
    filesystem=None,
    **options: Any,
) -> dict[str, Any]:
    """Score a corpus (resumable, as score_corpus) and return the reward model's score mean and std
    over it (every scored response: both sides of pairs), as the `shaping` a served model takes:
    `{"normalize": {"mean": ..., "std": ...}}`."""
    summary = score_corpus(input_path, output_path, model, filesystem=filesystem, **options)
    if summary["kind"] != "reward":
        raise InvalidInput(f"calibrate measures a reward model's scores; this model is a {summary['kind']}")
    stats = summary.get("score_stats") or {}
    if not stats.get("count") or not stats.get("std"):
        raise InvalidInput(f"{input_path}: too few finite scores to calibrate on ({stats.get('count', 0)})")
    return {
        "model": summary["model"],
        "corpus": str(input_path),
        "count": stats["count"],
        "mean": stats["mean"],
        "std": stats["std"],
        "shaping": {"normalize": {"mean": stats["mean"], "std": stats["std"]}},
    }
