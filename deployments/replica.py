"""One reward-model or critic replica: token ids in, scores/verdicts out.

Replicas never see text. Calls from concurrent requests are gathered by `@serve.batch` up to a
token budget (`batch_max_tokens`, live-tunable with `batch_wait_timeout_s` through user_config),
then run as length-sorted, token-budget micro-batches by the same runner in-process scoring uses.
The forward pass runs in a worker thread so the replica's event loop keeps taking requests (and
answering health checks) meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from ray import serve
from ray.serve import metrics

from cluster.core.batching import call_cost
from cluster.core.config import BATCH_MAX_TOKENS, BATCH_WAIT_TIMEOUT_S, ModelSpec
from cluster.core.memory import return_big_blocks
from cluster.engine.loading import load_model
from cluster.engine.runner import Ran
from cluster.kinds import kind_of


def count_tokens(calls: list[dict[str, Any]]) -> int:
    """A call's tokens as the runner computes them: a prefix its sequences share, once (the request
    core plans calls by the same count, cluster/core/batching.py: plan_calls)."""
    return sum(call_cost(call["seqs"]) for call in calls)


class ModelReplica:
    """Deployed once per model (see deployments/app.py), with that model's resources. Its calls
    come from `deployments/handles.py: ReplicaBackend` (payload: `replica_call`)."""

    def __init__(self, spec: dict[str, Any]):
        return_big_blocks()
        self.spec = ModelSpec(**spec)
        self.model = load_model(self.spec)
        self.lock = threading.Lock()  # one forward at a time per replica (one GPU)
        self.batching: dict[str, Any] = {
            "batch_max_tokens": BATCH_MAX_TOKENS,
            "batch_wait_timeout_s": BATCH_WAIT_TIMEOUT_S,
        }
        self.stats = {
            "batches": 0,
            "calls": 0,
            "sequences": 0,
            "tokens": 0,
            "computed_tokens": 0,
            "max_calls_in_batch": 0,
        }
        self.tags = {"model": self.spec.name}
        self.m_tokens = metrics.Counter("scoring_tokens_total", "tokens scored", tag_keys=("model",))
        self.m_batch_calls = metrics.Histogram(
            "scoring_batch_requests",
            "requests gathered per batch",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
            tag_keys=("model",),
        )
        self.m_batch_tokens = metrics.Histogram(
            "scoring_batch_tokens",
            "tokens per gathered batch",
            boundaries=[256, 1024, 4096, 16384, 65536],
            tag_keys=("model",),
        )
        self.m_padding = metrics.Gauge(
            "scoring_padding_efficiency", "useful / computed tokens, last batch", tag_keys=("model",)
        )
        self.m_queue_wait = metrics.Histogram(
            "scoring_queue_wait_seconds",
            "time from call to batch start",
            boundaries=[0.001, 0.005, 0.02, 0.1, 0.5, 2.0],
            tag_keys=("model",),
        )

    # -- live configuration

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        for method in (self.score, self.verdicts):
            if "batch_max_tokens" in user_config:
                method.set_max_batch_size(int(user_config["batch_max_tokens"]))
            if "batch_wait_timeout_s" in user_config:
                method.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        if "batch_max_tokens" in user_config:  # a causal LM's next-token reads gather as verdicts do
            self.next_token.set_max_batch_size(int(user_config["batch_max_tokens"]))
        if "batch_wait_timeout_s" in user_config:
            self.next_token.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        if "max_batch_tokens" in user_config:
            self.model.runner.max_batch_tokens = max(int(user_config["max_batch_tokens"]), self.spec.max_length)
        self.batching.update(user_config)

    # -- scoring, batched across concurrent requests

    @serve.batch(max_batch_size=BATCH_MAX_TOKENS, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S, batch_size_fn=count_tokens)
    async def score(self, calls: list[dict[str, Any]]) -> list[list[tuple[float, list[float] | None]]]:
        """Reward model: for each call's sequences, (scalar reward, every label's value for a
        multi-output model, else None)."""
        return await self._gathered(calls, "score")

    @serve.batch(max_batch_size=BATCH_MAX_TOKENS, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S, batch_size_fn=count_tokens)
    async def verdicts(self, calls: list[dict[str, Any]]) -> list[list[float]]:
        """Critic fast path: P(A) for each call's judge prompts."""
        return await self._gathered(calls, "verdicts")

    @serve.batch(max_batch_size=BATCH_MAX_TOKENS, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S, batch_size_fn=count_tokens)
    async def next_token(self, calls: list[dict[str, Any]]) -> list[list]:
        """A causal LM (critic, pointwise judge): the next token's log-probabilities over the whole
        vocabulary after each prompt (float32 rows), gathered across requests whatever tokens each
        one reads (Op.NEXT_TOKEN; the request core picks its label tokens)."""
        return await self._gathered(calls, "next_token")

    async def generate(self, call: dict[str, Any]) -> list:
        """A judge's generate mode: its prompts join this replica's continuously batched generation
        loop, shared with every other caller and with chat completions (not under the forward
        lock: the loop is its own thread; not in the scoring metrics, which count forward passes)."""
        return (await asyncio.to_thread(self.model.runner.run, "generate", call["seqs"])).outputs

    async def chat(self, job) -> Any:
        """A chat completion: it joins this replica's continuously batched generation loop (every
        caller's requests share its decode steps; cluster/engine/generation.py)."""
        return await self.model.runner.chat_runner.achat(job)

    async def _gathered(self, calls: list[dict[str, Any]], op: str) -> list[list]:
        started = time.time()
        for c in calls:
            self.m_queue_wait.observe(max(0.0, started - c["sent_at"]), tags=self.tags)
        flat = [seq for c in calls for seq in c["seqs"]]
        ran = await asyncio.to_thread(self._locked, self.model.runner.run, op, flat)
        self._record(len(calls), sum(len(s) for s in flat), ran)
        results, at = [], 0
        for c in calls:
            results.append(ran.outputs[at : at + len(c["seqs"])])
            at += len(c["seqs"])
        return results

    def _locked(self, fn, *args):
        with self.lock:
            return fn(*args)

    def _record(self, n_calls: int, tokens: int, ran: Ran) -> None:
        """Counters and metrics; padding efficiency from the plan the runner ran (not planned again)."""
        self.stats["batches"] += 1
        self.stats["calls"] += n_calls
        self.stats["sequences"] += len(ran.outputs)
        self.stats["tokens"] += tokens
        self.stats["computed_tokens"] += ran.computed  # padding included, shared prefixes once
        self.stats["max_calls_in_batch"] = max(self.stats["max_calls_in_batch"], n_calls)
        self.m_tokens.inc(tokens, tags=self.tags)
        self.m_batch_calls.observe(n_calls, tags=self.tags)
        self.m_batch_tokens.observe(tokens, tags=self.tags)
        self.m_padding.set(ran.padding_efficiency, tags=self.tags)

    # -- introspection and health

    def describe(self) -> dict[str, Any]:
        """What a caller that tokenizes for itself (the Ray Data pipeline's via_serve) needs: the
        spec, and the most tokens one call may carry (@serve.batch rejects a bigger call)."""
        head = self.model.runner.describe_head() if kind_of(self.spec).head == "sequence" else {"labels": None}
        return {
            "spec": self.spec.model_dump(),
            "batch_max_tokens": int(self.batching["batch_max_tokens"]),
            "labels": head["labels"],
            "problem_type": head.get("problem_type"),
        }

    def get_stats(self) -> dict[str, Any]:
        import ray

        ctx = serve.get_replica_context()
        return {
            **self.stats,
            "replica": ctx.replica_id.unique_id,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "max_batch_tokens": self.model.runner.max_batch_tokens,
            **self.batching,
        }

    def check_health(self) -> None:
        """Touch the model: a one-token forward. A replica still loading is not yet checked (Serve
        waits for __init__), so slow loading is not mistaken for death."""
        bos = self.model.encoder.bos_id if self.model.encoder.bos_id is not None else 0
        if self.lock.acquire(blocking=False):  # busy scoring is alive; don't queue behind it
            try:
                self.model.runner.run(kind_of(self.spec).fast_op, [[bos]])
            finally:
                self.lock.release()
