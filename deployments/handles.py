"""The request core's encoder and backend over Serve deployment handles (the Serve layer's twins of
cluster/core/local.py): the ingress and the Ray Data pipeline's `via_serve` stage both use them,
so the call a replica receives is built here and nowhere else.

Every failure that crossed Ray comes back as `from_ray` reads it: the ScoringError a replica or the
tokenizer raised, or Overloaded (retry) for back-pressure and a replica lost mid-call.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cluster.core.errors import from_ray
from cluster.core.service import Call, Part
from cluster.core.tokenization import Encoded


def replica_call(seqs: list[list[int]]) -> dict[str, Any]:
    """What a replica's score / verdicts / generate receive: the sequences and when they were sent
    (the replica's queue-wait metric)."""
    return {"seqs": seqs, "sent_at": time.time()}


class HandleEncoder:
    """The tokenizer deployment: one call per model for all of a flow's parts."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    async def encode(self, parts: list[Part]) -> list:
        by_model: dict[str, list[int]] = {}
        for k, part in enumerate(parts):
            by_model.setdefault(part.model, []).append(k)
        out: list = [None] * len(parts)

        async def one_model(model: str, indices: list[int]) -> None:
            requests = [(parts[k].op, parts[k].inputs, parts[k].what, parts[k].swap, parts[k].options) for k in indices]
            try:
                encoded = await self.tokenizer.encode.remote(model, requests)
            except Exception as err:  # noqa: BLE001 - the tokenizer's failure is each part's
                encoded = [from_ray(err)] * len(indices)
            for k, enc in zip(indices, encoded):
                out[k] = enc if isinstance(enc, BaseException) else [Encoded(*item) for item in enc]

        await asyncio.gather(*(one_model(m, idx) for m, idx in by_model.items()))
        return out


class ReplicaBackend:
    """The models' replica deployments. A call is one handle call; a replica gathers the calls of
    concurrent callers up to its token budget (`call_tokens`) and runs them as one runner pass."""

    def __init__(self, handles: dict[str, Any], call_tokens: dict[str, int], *, alone: frozenset[str] = frozenset(),
                 blocking: bool = False):
        self.handles = handles
        self.budgets = call_tokens
        self.alone = alone  # models with cross_request_batching off: one forward per call (the baseline)
        self.blocking = blocking  # a synchronous caller (a Ray Data stage): run() waits itself

    def call_tokens(self, model: str) -> int | None:
        return self.budgets.get(model)

    def _send(self, call: Call):
        method = call.op  # the replica's methods are named after the ops: score, verdicts, generate
        if call.model in self.alone and call.op != "generate":
            method += "_alone"
        return getattr(self.handles[call.model], method).remote(replica_call(call.seqs))

    def run(self, calls: list[Call]):
        responses = [self._send(c) for c in calls]  # all in flight before the first wait
        if not self.blocking:
            return self._gather(calls, responses)
        out = []
        for call, response in zip(calls, responses):
            try:
                out.append(response.result())
            except Exception as err:  # noqa: BLE001 - a call's failure is its items' jobs'
                out.append(from_ray(err, call.model))
        return out

    @staticmethod
    async def _gather(calls: list[Call], responses) -> list:
        async def one(call: Call, response):
            try:
                return await response
            except Exception as err:  # noqa: BLE001
                return from_ray(err, call.model)

        return list(await asyncio.gather(*(one(c, r) for c, r in zip(calls, responses))))

    async def head(self, model: str) -> dict[str, Any]:
        info = await self.handles[model].describe.remote()
        return {"labels": info["labels"], "problem_type": info["problem_type"]}
