"""What scoring returns, and the arithmetic on it that every front door shares (no torch here).

- `RewardResult` (a reward model's score of one item), `Comparison` (a reward model's pairwise
  judgement: sigmoid of the reward difference), `Verdict` (a critic's), `Generated` (what a critic
  replica answers in generate mode).
- Judge modes, the A/B swap and the debias combiner (both orders averaged) are defined here once:
  in-process judging, the routes, the handle API and the Ray Data pipeline all use these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, get_args

from cluster.core.errors import InvalidInput

# Ours against the model card's own computation, fp32, absolute (docs/design.md, scoring semantics): the
# one tolerance every parity test and benchmark check uses.
SCORE_TOLERANCE = 1e-4

Mode = Literal["logits", "generate"]  # the critic's fast path (verdict logits) and slow path (generation)
MODES: tuple[str, ...] = get_args(Mode)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidInput(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class RewardResult:
    score: float
    truncated: bool
    num_tokens: int
    values: list[float] | None = None  # every output label, for a model with more than one


@dataclass(frozen=True)
class Comparison:
    """An RM's pairwise judgement: prob_a = sigmoid(reward_a - reward_b)."""

    winner: str  # "A" | "B" (ties go to A)
    prob_a: float
    reward_a: float
    reward_b: float
    truncated: bool


@dataclass(frozen=True)
class Verdict:
    winner: str | None  # "A" | "B"; None only when a generated answer holds no verdict
    prob_a: float | None  # P(A better); None when generate mode produced no verdict to read it from
    truncated: bool = False
    text: str | None = None  # the generated answer (mode="generate")
    text_swapped: str | None = None  # the answer with A and B swapped (mode="generate", debias)


@dataclass(frozen=True)
class Generated:
    """A critic's greedy answer: its text, the verdict it states (None if none), and P(A) read at
    the verdict token (None without a verdict)."""

    text: str
    winner: str | None
    prob_a: float | None


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def winner_of(prob_a: float) -> str:
    return "A" if prob_a >= 0.5 else "B"


# ---------------------------------------------------------------- pairs judged by a reward model


def pair_conversations(items: list[Mapping[str, str]]) -> list[list[dict[str, str]]]:
    """Each pair as two conversations (prompt + response_a, prompt + response_b), interleaved."""
    return [[{"role": "user", "content": it["prompt"]}, {"role": "assistant", "content": it[key]}]
            for it in items for key in ("response_a", "response_b")]


def pair_comparisons(scores: Sequence[float], truncated: Sequence[bool]) -> list[Comparison]:
    """Interleaved (a, b) rewards -> prob_a = sigmoid(r_a - r_b); ties go to A."""
    out = []
    for i in range(0, len(scores), 2):
        r_a, r_b = scores[i], scores[i + 1]
        prob_a = sigmoid(r_a - r_b)
        out.append(Comparison(winner_of(prob_a), prob_a, r_a, r_b, truncated[i] or truncated[i + 1]))
    return out


# ---------------------------------------------------------------- both orders: swap and debias


def swap_ab(item: Mapping[str, str]) -> dict[str, str]:
    """The same judge item with the two responses exchanged."""
    return {**item, "response_a": item["response_b"], "response_b": item["response_a"]}


def debiased_prob_a(prob_a: float, prob_a_swapped: float) -> float:
    """P(A) averaged over both orders. In the swapped order 'A' is the original B, so the original
    A's probability there is 1 - its P(A)."""
    return (prob_a + (1.0 - prob_a_swapped)) / 2.0


def combine(forward: Verdict, swapped: Verdict) -> Verdict:
    """One verdict from both orders: the averaged P(A) and its winner; in generate mode, where an
    answer held no readable verdict, the verdict the two answers agree on, else none."""
    truncated = forward.truncated or swapped.truncated
    text = {"text": forward.text, "text_swapped": swapped.text}
    if forward.prob_a is not None and swapped.prob_a is not None:
        prob_a = debiased_prob_a(forward.prob_a, swapped.prob_a)
        return Verdict(winner_of(prob_a), prob_a, truncated, **text)
    flipped = {"A": "B", "B": "A"}.get(swapped.winner)
    winner = forward.winner if forward.winner == flipped else None
    return replace(forward, winner=winner, prob_a=None, truncated=truncated, **text)
