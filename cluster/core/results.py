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


@dataclass(frozen=True)
class StepRewards:
    """A process reward model's score of one solution: a reward per step (the probability that the
    step is correct, read at its tag) and one score from them (the `aggregate`)."""

    score: float  # the aggregate of step_rewards
    step_rewards: list[float]
    aggregate: str  # min | last | mean | product
    truncated: bool = False  # always False: a prm's input is never cut (every step is read)
    num_tokens: int = 0

    @property
    def weakest_step(self) -> int:
        """The index of the lowest step reward (the first, on a tie)."""
        return min(range(len(self.step_rewards)), key=self.step_rewards.__getitem__)


@dataclass(frozen=True)
class Rating:
    """A pointwise judge's rating of one response.

    mode="logits": `expected` is the probability-weighted rating over the scale, read in one forward
    pass where the answer writes its rating; `rating` is the most probable one (the greedy choice).
    mode="generate": `rating` is the rating the generated answer states (the last one it writes;
    None if it writes none) and `expected` is read at that rating's token."""

    expected: float | None
    rating: float | None
    probs: list[float] | None  # P(rating) over the scale, in the spec's order (sums to 1)
    truncated: bool = False
    text: str | None = None  # the generated answer (mode="generate")

    @property
    def score(self) -> float | None:
        return self.expected if self.expected is not None else self.rating


@dataclass(frozen=True)
class GeneratedRating:
    """A pointwise judge's greedy answer: its text, the index of the rating it states last (None if
    none) and the scale's probabilities read at that rating's token (None if not found there)."""

    text: str
    choice: int | None
    probs: list[float] | None


def aggregate_steps(rewards: Sequence[float], how: str) -> float:
    """One score from a solution's step rewards."""
    if not rewards:
        raise InvalidInput("a solution with no steps has no step rewards to aggregate")
    if how == "min":
        return min(rewards)
    if how == "last":
        return rewards[-1]
    if how == "mean":
        return math.fsum(rewards) / len(rewards)
    if how == "product":
        return math.prod(rewards)
    raise InvalidInput(f"aggregate: must be one of min, last, mean, product, got {how!r}")


STEP_AGGREGATES = ("min", "last", "mean", "product")


def check_aggregate(how: str | None) -> str | None:
    if how is not None and how not in STEP_AGGREGATES:
        raise InvalidInput(f"aggregate: must be one of min, last, mean, product, got {how!r}")
    return how


def rating_of(probs: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """(expected rating, most probable rating) from the scale's probabilities."""
    expected = math.fsum(p * v for p, v in zip(probs, values))
    best = max(range(len(probs)), key=probs.__getitem__)
    return expected, values[best]


def label_probabilities(logprobs: Sequence[float], apply_softmax: bool) -> list[float]:
    """Generative scores from the next token's log-probabilities of the label tokens: the softmax
    over just those tokens (`apply_softmax`), else each one's probability over the whole
    vocabulary (exp). As vLLM's /generative_scoring and SGLang's /v1/score compute them."""
    if not apply_softmax:
        return [math.exp(x) for x in logprobs]
    top = max(logprobs)
    exps = [math.exp(x - top) for x in logprobs]
    total = sum(exps)
    return [e / total for e in exps]


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
    return [
        [{"role": "user", "content": it["prompt"]}, {"role": "assistant", "content": it[key]}]
        for it in items
        for key in ("response_a", "response_b")
    ]


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
