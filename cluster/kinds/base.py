"""What a model kind is to the rest of the code: its ops, its spec fields and checks, how its
inputs are encoded and its weights read, its corpus outputs. One `Kind` per module in this
package; cluster/kinds/__init__.py lists them. Nothing here imports torch, Ray or FastAPI."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, Field


class Op(StrEnum):
    """What a replica runs for a call. A str, so an op is its name on the wire and in stats."""

    SCORE = "score"  # one forward pass: a reward per item (reward model), per step (prm)
    VERDICTS = "verdicts"  # one forward pass: P(verdict) (critic), P(rating) (pointwise judge)
    GENERATE = "generate"  # a judge writes its answer (critic, pointwise judge)
    # one forward pass: the next token's log-probabilities after a prompt (any causal LM served:
    # vLLM's /generative_scoring, SGLang's decoder-only /v1/score)
    NEXT_TOKEN = "next_token"


# how the engine reads a kind's weights: a sequence classifier's head, a causal LM's next-token
# distribution, or a prm's per-step head (a token classifier or a causal LM read at each tag)
Head = Literal["sequence", "next_token", "steps"]
# which encoder turns an item into ids (cluster/engine/encoders.py)
EncoderStyle = Literal["chat", "judge", "rating", "steps"]
# what one scored unit of a corpus is: a conversation with a reward, a pair judged in one prompt,
# a solution with step rewards, a response with a rating; a generative judge's is a chat (it scores
# no corpus: its verdicts are its clients' to read)
Unit = Literal["reward", "pair", "steps", "rating", "chat"]


def no_check(spec: Any) -> None:
    return None


@dataclass(frozen=True)
class ReportText:
    """How a corpus report (cluster/data/report) names a kind's numbers."""

    name: str = "reward model"
    score_axis: str = "reward model score"  # {aggregate}: a prm's aggregate of its step rewards
    scores: str = "reward model scores"
    margins: str = "reward margins"
    margin_axis: str = "reward margin: chosen score - rejected score"


@dataclass(frozen=True)
class Kind:
    name: str
    title: str  # "a reward model": how errors name it
    summary: str  # what it answers, for errors and docs
    spec_fields: type[BaseModel]  # its own spec fields (ModelSpec is the fields every kind shares + these)
    fast_op: Op  # the one-forward-pass op its replicas run (and a health check touches)
    head: Head
    encoder: EncoderStyle
    unit: Unit
    padding_side: Literal["left", "right"]  # "auto" resolves to this
    fixed_padding: bool = False  # padding_side may not be set to the other side
    needs_chat_template: bool = False
    check: Callable[[Any], None] = field(default=no_check)  # kind-specific spec checks (ValueError)
    # another kind's field given to this kind with a value: the message that says why it has no place here
    refused: dict[str, str] = field(default_factory=dict)
    margin_label: str = "reward chosen - rejected"  # what a pair's margin means in a corpus's metrics
    score_label: str = "scores"  # what a corpus's `score` column holds
    report: ReportText = field(default_factory=ReportText)

    def __str__(self) -> str:
        return self.name

    @cached_property
    def fields(self) -> frozenset[str]:
        return frozenset(self.spec_fields.model_fields)

    @property
    def scalar_reward(self) -> bool:
        """Answers one reward per conversation that shaping (normalize, clip) applies to."""
        return self.unit == "reward"

    @property
    def judges_pairs(self) -> bool:
        """A pair is judged in one prompt (P(A)), not compared by two rewards."""
        return self.unit == "pair"

    @property
    def steps(self) -> bool:
        return self.unit == "steps"

    @property
    def rates(self) -> bool:
        return self.unit == "rating"

    @property
    def one_response_at_a_time(self) -> bool:
        """Scores one response per unit, as a reward model does (its pairs too: two units)."""
        return self.unit in ("steps", "rating")


def template_fields(template: str, what: str = "judge_template") -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as err:
        raise ValueError(f"{what} is not a valid format string: {err}") from None


class JudgeFields(BaseModel):
    """The spec fields of a judge that writes its answer: a critic, a pointwise judge."""

    judge_template: str | None = Field(None, description="the judge prompt (default: the kind's own)")
    max_new_tokens: int = Field(64, ge=1, le=32768, description="generate mode: the most tokens the judge writes")
    reasoning_end: str | None = Field(
        "</think>",
        description="generate mode: a reasoning judge's end of thinking; the verdict is read after the last one "
        "(an answer that opens its reasoning and never ends it states none); null: read anywhere",
    )
    verdict_pattern: str | None = Field(
        None,
        description="generate mode: a regular expression with one group, the verdict (critic: A or B) or the "
        r'rating (pointwise: one of `ratings`), e.g. \\boxed\{(A|B)\} or "rating": *(\d+); '
        "default: the exact verdict / rating strings",
    )


def check_verdict_pattern(pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        groups = re.compile(pattern).groups
    except re.error as err:
        raise ValueError(f"verdict_pattern is not a regular expression: {err}") from None
    if groups != 1:
        raise ValueError(f"verdict_pattern must have exactly one group (the verdict or rating), got {groups}")


SYSTEM_PROMPT = (
    "pointwise judge / prm: a system message before the prompt (a prm's item or conversation may bring its own)"
)
JUDGE_TEMPLATE_ONLY = "judge_template is only for kind='critic' or 'pointwise'"
REWARD_LABEL_ONLY = "reward_label / reward_weights are for kind='reward' (and 'prm': its positive label)"
