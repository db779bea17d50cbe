"""A chat completion as the request core hands it to a model and gets it back (plain data: it
crosses Ray). The model side is cluster/engine/generation.py; the route, cluster/http/chat.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChatJob:
    """One chat completion as the model side runs it (plain data: it crosses Ray)."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None  # None: the model's max_new_tokens
    n: int = 1
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None  # with temperature > 0: the same answer for the same seed
    top_logprobs: int = 0  # per token, the likeliest alternatives and their logprobs

    @property
    def samples(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class Choice:
    text: str
    token_ids: list[int]
    tokens: list[str]  # each generated token as text (the logprobs' `token`)
    pieces: list[str]  # what each token adds to `text` (a stream's deltas: they join to `text`)
    logprobs: list[float] | None
    finish_reason: str  # "stop" (an end token or a stop string) or "length"
    top: list[list[tuple[str, float, int]]] | None = None  # per token: top_logprobs (text, logprob, id)


@dataclass(frozen=True)
class ChatResult:
    prompt_tokens: int
    choices: list[Choice]

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.choices)
