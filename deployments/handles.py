"""The request core's encoder and backend over Serve deployment handles (the Serve layer's twins of
cluster/engine/local.py): the ingress and the Ray Data pipeline's `via_serve` stage both use them,
so the call a replica receives is built here and nowhere else.

Every failure that crossed Ray comes back as `from_ray` reads it: the ScoringError a replica or the
tokenizer raised, or Overloaded for back-pressure and a replica lost mid-call, which the backend
waits out (admission: a window of calls in flight per model, refused calls sent again after the
pauses of cluster/core/retry.py) until its deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.core.errors import Overloaded, from_ray
from cluster.core.inputs import Encoded
from cluster.core.retry import Backoff, GaveUp, retry_async, retry_sync
from cluster.core.service import Call, Part


def replica_call(seqs: list[list[int]]) -> dict[str, Any]:
    """What a replica's score / verdicts / generate receive: the sequences and when they were sent
    (the replica's queue-wait metric)."""
    return {"seqs": seqs, "sent_at": time.time()}


ADMISSION_TIMEOUT_S = 120.0  # how long a call may wait for a replica before the caller is told 503
PAUSE_S = (0.05, 1.0)  # a refused call is sent again after a jittered pause growing from 50 ms to 1 s
_RNG = random.Random()


def pauses() -> Backoff:
    """The pauses before sending a refused call again: doubling from PAUSE_S[0] to PAUSE_S[1],
    jittered (x0.5 to x1.5) so the callers refused together do not come back together."""
    return Backoff(*PAUSE_S, jitter=(0.5, 1.5))


def pause(attempt: int, rng: random.Random = _RNG) -> float:
    """The wait before sending a refused call again for the `attempt`-th time (from 0)."""
    return pauses().delay(attempt, rng)


class _NoRoom(Exception):
    """The deadline passed while a call waited for room in its model's window."""


async def sent_until_taken(
    send: Callable[[], Awaitable], timeout_s: float, gate: asyncio.Semaphore | None = None, model: str | None = None
) -> tuple[Any, bool, int]:
    """(`send()`'s answer or the error it met, whether the deadline ended it, how many times it was
    sent again). Sent when `gate` has room; sent again after a `pause` while it is refused for
    back-pressure or loses its replica (Overloaded, as `from_ray` reads it), until `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    refused: list[BaseException] = []  # the refusals sent again, in order

    async def once() -> Any:
        if gate is not None:
            try:
                async with asyncio.timeout_at(deadline):
                    await gate.acquire()
            except TimeoutError:
                raise _NoRoom from None
        try:
            return await send()
        except Exception as err:  # noqa: BLE001 - the failure is the caller's to hand on
            failure = from_ray(err, model)
            if isinstance(failure, Overloaded):
                raise failure from None  # sent again
            return failure
        finally:
            if gate is not None:
                gate.release()

    try:
        out = await retry_async(
            once,
            retry_on=Overloaded,
            backoff=pauses(),
            deadline=deadline,
            clock=loop.time,
            rng=_RNG,
            on_retry=lambda err, _: refused.append(err),
        )
    except GaveUp as end:
        return end.last, True, end.retries
    except _NoRoom:
        return (refused[-1] if refused else None), True, len(refused)
    return out, False, len(refused)


class _Refused(Exception):
    """A wave of blocking calls had `count` calls refused: they go out again after a pause."""

    def __init__(self, count: int):
        super().__init__(f"{count} call(s) refused")
        self.count = count


class HandleEncoder:
    """The tokenizer deployment: one call per model for all of a flow's parts (a call that lost its
    replica or met back-pressure is sent again, as the replica backend does, until `timeout_s`)."""

    def __init__(self, tokenizer, timeout_s: float = ADMISSION_TIMEOUT_S):
        self.tokenizer = tokenizer
        self.timeout_s = timeout_s

    async def _encode(self, model: str, requests: list) -> list:
        out, _, _ = await sent_until_taken(lambda: self.tokenizer.encode.remote(model, requests), self.timeout_s)
        return [out] * len(requests) if isinstance(out, BaseException) else out

    async def encode(self, parts: list[Part]) -> list:
        by_model: dict[str, list[int]] = {}
        for k, part in enumerate(parts):
            by_model.setdefault(part.model, []).append(k)
        out: list = [None] * len(parts)

        async def one_model(model: str, indices: list[int]) -> None:
            requests = [(parts[k].op, parts[k].inputs, parts[k].what, parts[k].swap, parts[k].options) for k in indices]
            encoded = await self._encode(model, requests)
            for k, enc in zip(indices, encoded):
                out[k] = enc if isinstance(enc, BaseException) else [Encoded(*item) for item in enc]

        await asyncio.gather(*(one_model(m, idx) for m, idx in by_model.items()))
        return out


class ReplicaBackend:
    """The models' replica deployments. A call is one handle call; a replica gathers the calls of
    concurrent callers up to its token budget (`call_tokens`) and runs them as one runner pass.

    Admission: at most `windows[model]` calls are in flight from this caller at once (what the
    model's replicas hold plus what Serve queues for one caller, so this caller alone never meets
    Serve's back-pressure); the rest wait their turn here. A call refused anyway (other callers
    filled the queue, fewer replicas than the most) or whose replica died is sent again after a
    jittered pause (scoring and greedy generation are pure functions of their input, so a call sent
    twice is answered the same), until `timeout_s` after it was first tried; then Overloaded (503)
    names the limit. Any other failure is the call's at once."""

    def __init__(
        self,
        handles: dict[str, Any],
        call_tokens: dict[str, int],
        *,
        blocking: bool = False,
        windows: dict[str, int] | None = None,
        timeout_s: float = ADMISSION_TIMEOUT_S,
    ):
        self.handles = handles
        self.budgets = call_tokens
        self.blocking = blocking  # a synchronous caller (a Ray Data stage): run() waits itself
        self.windows = dict(windows or {})
        self.timeout_s = timeout_s
        self.gates: dict[str, asyncio.Semaphore] = {}  # per model, in the caller's event loop
        self.stats = {"calls": 0, "resent": 0, "gave_up": 0}

    def call_tokens(self, model: str) -> int | None:
        return self.budgets.get(model)

    def _send(self, call: Call):
        self.stats["calls"] += 1  # the replica's methods are named after the ops: score, verdicts, generate
        return getattr(self.handles[call.model], call.op).remote(replica_call(call.seqs))

    def _gave_up(self, call: Call, last: BaseException | None) -> Overloaded:
        self.stats["gave_up"] += 1
        why = f"; last: {last.message}" if isinstance(last, Overloaded) else ""
        return Overloaded(
            f"model '{call.model}': no replica took the request's call within {self.timeout_s:g}s "
            f"(ingress.admission_timeout_s){why}; retry later, or add replicas "
            "(replicas.max_replicas) or queue room (replicas.max_queued_requests)"
        )

    def run(self, calls: list[Call]):
        return self._run_blocking(calls) if self.blocking else self._run_async(calls)

    async def _run_async(self, calls: list[Call]) -> list:
        return list(await asyncio.gather(*(self._call(c) for c in calls)))

    def _gate(self, model: str) -> asyncio.Semaphore | None:
        if model not in self.gates and self.windows.get(model):
            self.gates[model] = asyncio.Semaphore(self.windows[model])
        return self.gates.get(model)

    async def _call(self, call: Call):
        """One call's outputs (or the error it met), sent when the model's window has room and sent
        again while it is refused for back-pressure or loses its replica, until the deadline."""
        out, timed_out, resends = await sent_until_taken(
            lambda: self._send(call), self.timeout_s, self._gate(call.model), call.model
        )
        self.stats["resent"] += resends
        return self._gave_up(call, out) if timed_out else out

    def _run_blocking(self, calls: list[Call]) -> list:
        """`_call` for a synchronous caller: the calls go out in waves of at most a window per
        model, all of a wave in flight before the first wait; refused ones go in a later wave."""
        out: list = [None] * len(calls)
        todo = list(range(len(calls)))
        last: dict[int, BaseException] = {}

        def waves() -> list:
            """Waves until the calls are answered, or until one has refusals (raised as _Refused:
            they and the calls not yet sent go out after a pause)."""
            nonlocal todo
            while todo:
                wave, later, taken = [], [], {}
                for i in todo:
                    model = calls[i].model
                    room = self.windows.get(model) or len(todo)
                    (wave if taken.get(model, 0) < room else later).append(i)
                    taken[model] = taken.get(model, 0) + 1
                responses = [(i, self._send(calls[i])) for i in wave]
                refused = []
                for i, response in responses:
                    try:
                        out[i] = response.result()
                    except Exception as err:  # noqa: BLE001
                        out[i] = from_ray(err, calls[i].model)
                        if isinstance(out[i], Overloaded):
                            last[i] = out[i]
                            refused.append(i)
                todo = sorted(refused + later)
                if refused:
                    raise _Refused(len(refused))
            return out

        def resent(refused: BaseException, _pause: float) -> None:
            self.stats["resent"] += refused.count

        try:
            return retry_sync(
                waves,
                retry_on=_Refused,
                backoff=pauses(),
                deadline=time.monotonic() + self.timeout_s,
                rng=_RNG,
                on_retry=resent,
            )
        except GaveUp:
            for i in todo:
                out[i] = self._gave_up(calls[i], last.get(i))
            return out

    async def chat(self, model: str, job: Any) -> Any:
        """A chat completion on the model's replica, where it joins the generation loop every
        caller shares (continuous batching across ingress replicas); sent again while refused."""
        out, timed_out, _ = await sent_until_taken(
            lambda: self.handles[model].chat.remote(job), self.timeout_s, self._gate(model), model
        )
        return self._gave_up(Call(model, "chat", []), out) if timed_out else out

    async def head(self, model: str) -> dict[str, Any]:
        info = await self.handles[model].describe.remote()
        return {"labels": info["labels"], "problem_type": info["problem_type"]}
