"""Example rows shown on the page: the most confident wins and losses of pairs, the highest and lowest
scores of plain rows, their prompts and responses shortened to plain text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.data.metrics import column_values, number, percent
from cluster.kinds import unit_of

EXAMPLES = 5  # most confident wins and losses (pairs), or highest and lowest scores, shown each
EXAMPLE_CHARS = 360  # a prompt or response is shortened to this many characters


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
    return {
        "Most confident wins": pair_example_rows(scored, best, kind),
        "Most confident losses": pair_example_rows(scored, worst, kind),
    }


def pair_example_rows(scored: pa.Table, indices: np.ndarray, kind: str) -> list[Example]:
    rows = scored.take(pa.array(indices, pa.int64())).to_pylist()
    examples = []
    for row in rows:
        values = [f"margin {number(row.get('margin'))}"]
        if unit_of(kind) == "pair":
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
    return {
        "Highest scores": score_example_rows(scored, order[:count]),
        "Lowest scores": score_example_rows(scored, lowest),
    }


def score_example_rows(scored: pa.Table, indices: np.ndarray) -> list[Example]:
    examples = []
    for row in scored.take(pa.array(indices, pa.int64())).to_pylist():
        texts = {
            column: display_text(row[column])
            for column in ("conversations", "messages", "prompt", "response")
            if column in row
        }
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
