"""Generative judges (kind "generative"): a chat model answering the judging prompts its clients
write. It has no verdict of its own to read: chat completions on the shared continuous-batching
loop, and the next token's log-probabilities after a prompt (generative scores), both from LMRunner."""

from __future__ import annotations

from typing import Any

from cluster.core.chat import ChatJob, ChatResult
from cluster.engine.lm import LMRunner
from cluster.engine.local import LoadedModel


class GenerativeRunner(LMRunner):
    def describe_head(self) -> dict[str, Any]:
        return {"labels": [], "problem_type": None}


class GenerativeModel(LoadedModel):
    """A loaded generative judge: `chat(messages, ...)` -> its answer (a ChatResult), greedy, on the
    model's continuously batched loop, as /v1/chat/completions answers it."""

    kind = "generative"
    runner: GenerativeRunner

    def chat(self, messages: list[dict[str, Any]], **options: Any) -> ChatResult:
        return self.runner.chat_runner.chat(ChatJob(messages=list(messages), **options))
