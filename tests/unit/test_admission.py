"""Admission without a cluster: the replica backend feeds a request's calls to a model as its window
frees, sends refused calls again until its deadline, and one job's failing call does not fail the
jobs gathered with it (cluster/core/service.py: flow; deployments/handles.py: ReplicaBackend)."""

from __future__ import annotations

import asyncio
import time

import pytest

from cluster.core.errors import InvalidInput, ModelFailure, Overloaded
from cluster.core.service import Call, SequencesJob, run_sync
from deployments import handles
from deployments.handles import ReplicaBackend


class FakeReplicas:
    """A model's deployment handle: `score.remote(call)` answers each sequence's length after a
    short wait; the first `refuse` sends are refused as Serve's back-pressure is (Overloaded, as
    `from_ray` reads BackPressureError); `fail` makes every send fail with that error."""

    def __init__(self, refuse: int = 0, fail: BaseException | None = None, blocking: bool = False):
        self.refuse, self.fail, self.blocking = refuse, fail, blocking
        self.sent = self.in_flight = self.most_in_flight = 0
        self.score = self

    def remote(self, payload):
        self.sent += 1
        refused = self.sent <= self.refuse
        if self.blocking:
            return _Result(self, payload, refused)
        return self._answer(payload, refused)

    async def _answer(self, payload, refused: bool):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.002)
            return self._outcome(payload, refused)
        finally:
            self.in_flight -= 1

    def _outcome(self, payload, refused: bool):
        if refused:
            raise Overloaded("the model's queue is full; retry after a moment")
        if self.fail is not None:
            raise self.fail
        return [float(len(s)) for s in payload["seqs"]]


class _Result:
    def __init__(self, replicas: FakeReplicas, payload, refused: bool):
        self.replicas, self.payload, self.refused = replicas, payload, refused
        replicas.in_flight += 1
        replicas.most_in_flight = max(replicas.most_in_flight, replicas.in_flight)

    def result(self):
        self.replicas.in_flight -= 1
        return self.replicas._outcome(self.payload, self.refused)


def calls(n: int) -> list[Call]:
    return [Call("rm", "score", [[1] * (i % 7 + 1), [2] * (i % 3 + 1)]) for i in range(n)]


def expected(batch: list[Call]) -> list[list[float]]:
    return [[float(len(s)) for s in c.seqs] for c in batch]


@pytest.fixture(autouse=True)
def quick_pauses(monkeypatch):
    monkeypatch.setattr(handles, "PAUSE_S", (0.001, 0.01))


@pytest.mark.parametrize("blocking", [False, True], ids=["async", "blocking"])
def test_more_calls_than_the_replicas_hold_wait_their_turn(blocking):
    """Seen before: a request needing more calls than max ongoing + queued was refused on every try."""
    replicas = FakeReplicas(blocking=blocking)
    backend = ReplicaBackend({"rm": replicas}, {"rm": 64}, windows={"rm": 5}, blocking=blocking)
    batch = calls(200)
    out = backend.run(batch) if blocking else asyncio.run(backend.run(batch))
    assert out == expected(batch)
    assert replicas.most_in_flight <= 5 and replicas.sent == 200
    assert backend.stats == {"calls": 200, "resent": 0, "gave_up": 0}


@pytest.mark.parametrize("blocking", [False, True], ids=["async", "blocking"])
def test_refused_calls_are_sent_again_until_taken(blocking):
    replicas = FakeReplicas(refuse=30, blocking=blocking)
    backend = ReplicaBackend({"rm": replicas}, {"rm": 64}, windows={"rm": 8}, blocking=blocking)
    batch = calls(40)
    out = backend.run(batch) if blocking else asyncio.run(backend.run(batch))
    assert out == expected(batch)  # every call answered once, in order, none lost to the refusals
    assert backend.stats["resent"] == 30 and replicas.sent == 70 and backend.stats["gave_up"] == 0


@pytest.mark.parametrize("blocking", [False, True], ids=["async", "blocking"])
def test_a_deadline_ends_the_wait_with_a_503_that_names_the_limit(blocking):
    replicas = FakeReplicas(refuse=10**9, blocking=blocking)
    backend = ReplicaBackend({"rm": replicas}, {"rm": 64}, windows={"rm": 2}, blocking=blocking, timeout_s=0.2)
    started = time.monotonic()
    out = backend.run(calls(3)) if blocking else asyncio.run(backend.run(calls(3)))
    assert 0.15 < time.monotonic() - started < 2
    assert all(isinstance(o, Overloaded) for o in out)
    assert "within 0.2s (ingress.admission_timeout_s)" in out[0].message
    assert "replicas.max_replicas" in out[0].message and "queue is full" in out[0].message


def test_the_deadline_also_bounds_the_wait_for_a_window_slot():
    class Slow(FakeReplicas):
        async def _answer(self, payload, refused):
            await asyncio.sleep(1.0)
            return [0.0 for _ in payload["seqs"]]

    backend = ReplicaBackend({"rm": Slow()}, {"rm": 64}, windows={"rm": 1}, timeout_s=0.3)
    out = asyncio.run(backend.run(calls(2)))
    assert out[0] == [0.0, 0.0] and isinstance(out[1], Overloaded)  # the second never got the slot


def test_other_failures_are_the_calls_own_at_once():
    replicas = FakeReplicas(fail=InvalidInput("conversations[0]: bad"))
    backend = ReplicaBackend({"rm": replicas}, {"rm": 64}, windows={"rm": 4})
    out = asyncio.run(backend.run(calls(3)))
    assert all(isinstance(o, InvalidInput) for o in out) and replicas.sent == 3


def test_pauses_are_jittered_and_grow():
    import random

    rng = random.Random(0)
    first = [handles.pause(0, rng) for _ in range(200)]
    assert min(first) >= 0.5 * handles.PAUSE_S[0] and max(first) <= 1.5 * handles.PAUSE_S[0]
    assert len({round(p, 6) for p in first}) > 150  # spread, not in step
    assert handles.pause(30, rng) <= 1.5 * handles.PAUSE_S[1]


class PoisonBackend:
    """Fails a call (ModelFailure) that holds the sequence [-1], or (Overloaded) one that holds [-2]."""

    def __init__(self):
        self.calls: list[Call] = []

    def call_tokens(self, model):
        return 1 << 20  # every job's sequences fit one call: they are gathered into it

    def run(self, batch):
        self.calls += batch
        out = []
        for c in batch:
            if [-1] in c.seqs:
                out.append(ModelFailure("model 'rm' failed: device error"))
            elif [-2] in c.seqs:
                out.append(Overloaded("model 'rm': no replica took the call"))
            else:
                out.append([float(sum(s)) for s in c.seqs])
        return out


def test_one_jobs_failing_call_does_not_fail_the_jobs_gathered_with_it():
    backend = PoisonBackend()
    jobs = [
        SequencesJob("rm", "score", [[1, 2], [3]]),
        SequencesJob("rm", "score", [[5], [-1]]),
        SequencesJob("rm", "score", [[4, 4]]),
    ]
    results = run_sync(jobs, encoder=None, backend=backend)
    assert results[0] == [3.0, 3.0] and results[2] == [8.0]
    assert isinstance(results[1], ModelFailure)
    assert len(backend.calls) == 4  # the shared call, then each job's share on its own


def test_a_call_that_timed_out_on_load_is_not_run_again_per_job():
    backend = PoisonBackend()
    jobs = [SequencesJob("rm", "score", [[1]]), SequencesJob("rm", "score", [[-2]])]
    results = run_sync(jobs, encoder=None, backend=backend)
    assert all(isinstance(r, Overloaded) for r in results) and len(backend.calls) == 1


def test_an_unexpected_failure_in_one_job_stays_that_jobs():
    """A tokenizer bug met by one request's input, or one job's result that cannot be shaped,
    fails that request alone (an unexpected error is its 500; the others are answered)."""
    from cluster.core.inputs import Encoded
    from cluster.core.service import RewardsJob
    from cluster.engine.local import LocalEncoder

    class Encoder:
        def encode(self, op, inputs, what, swap, options):
            if "boom" in inputs:
                raise UnicodeError("tokenizer bug")
            return [Encoded([len(x)], False) for x in inputs]

    class Spec:
        name, kind = "rm", "reward"

    class Backend(PoisonBackend):
        def run(self, batch):
            return [[(o, None) for o in out] for out in super().run(batch)]

    backend = Backend()
    jobs = [RewardsJob(Spec(), ["ab", "c"]), RewardsJob(Spec(), ["boom"]), RewardsJob(Spec(), ["abcd"])]
    results = run_sync(jobs, LocalEncoder({"rm": Encoder()}), backend)
    assert results[0].scores == [2.0, 1.0] and results[2].scores == [4.0]
    assert isinstance(results[1], UnicodeError)
