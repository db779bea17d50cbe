"""The Serve ingress: the request core (cluster/core/service.py) over deployment handles, with the
HTTP routes (cluster/http/app.py) and the Python handle API as its two front doors.

Flow per request: the route (or handle method) resolves the model and builds a job; concurrent
jobs reaching this replica are gathered (`Gatherer`) into one flow: one tokenizer call per
model, then the sequences of every job planned into replica calls under the replica's token budget
and sent at once (the replicas gather calls from all ingress replicas again into one forward pass),
then results back per job in input order.

A flow starts as soon as one of `gather_max_flows` slots is free, with every job queued by then (up
to `gather_max_requests`): a lone request waits for nothing, and under load the queue fills while
the flows in flight run, so one-sample requests share their RPCs. (The path before issue 13,
`@serve.batch` of 64 with a 2 ms wait and 4 flows, is bench-serve's baseline:
cluster/bench/serve_baselines.py.)
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve

from cluster.core.config import AppConfig, IngressSettings, api_key_digests
from cluster.core.memory import return_big_blocks
from cluster.core.service import ScoringService
from cluster.http import schemas
from cluster.http.app import create_app, warn_if_open
from deployments.handles import HandleEncoder, ReplicaBackend


class Gatherer:
    """Concurrent jobs run as shared flows: `await gatherer(job)` -> that job's result (an
    exception object when the job failed alone: the caller raises it). At most `max_flows` flows
    run at once, each with at most `max_jobs` jobs; a flow that is not full waits `wait_s` for more
    (0: none)."""

    def __init__(self, run: Callable[[list], Awaitable[list]], max_jobs: int, max_flows: int, wait_s: float = 0.0):
        self.run = run
        self.max_jobs = max_jobs
        self.max_flows = max_flows
        self.wait_s = wait_s
        self.queue: deque = deque()  # (job, future)
        self.active = 0
        self.flows: set[asyncio.Task] = set()  # strong references while they run
        self.stats = {"flows": 0, "jobs": 0, "max_jobs_in_flow": 0}

    async def __call__(self, job: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.queue.append((job, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self.queue and self.active < self.max_flows:
            self.active += 1
            batch = self._take([])
            task = asyncio.ensure_future(self._flow(batch))
            self.flows.add(task)
            task.add_done_callback(self.flows.discard)

    def _take(self, batch: list) -> list:
        while self.queue and len(batch) < self.max_jobs:
            job, future = self.queue.popleft()
            if not future.done():  # a caller that went away (client disconnect) is not run
                batch.append((job, future))
        return batch

    async def _flow(self, batch: list) -> None:
        try:
            if self.wait_s > 0 and len(batch) < self.max_jobs:
                await asyncio.sleep(self.wait_s)
                batch = self._take(batch)
            if not batch:
                return
            self.stats["flows"] += 1
            self.stats["jobs"] += len(batch)
            self.stats["max_jobs_in_flow"] = max(self.stats["max_jobs_in_flow"], len(batch))
            try:
                results = await self.run([job for job, _ in batch])
            except Exception as err:  # noqa: BLE001 - the flow's failure is each of its jobs'
                results = [err] * len(batch)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
        finally:
            self.active -= 1
            self._start()


def serve_http_host() -> str | None:
    """The address Serve's HTTP proxies listen on (None where the controller cannot be asked)."""
    try:
        import ray
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        if not ray.is_initialized():  # outside a cluster (tests): never start one to ask
            return None
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return ray.get(controller.get_http_config.remote(), timeout=10).host
    except Exception:  # noqa: BLE001 - a private API of Ray's: without it, the first request tells
        return None


@serve.ingress()  # the app is built on the replica, over this replica's service (__serve_build_asgi_app__)
class Ingress:
    def __init__(self, config: dict[str, Any], tokenizer, replicas: dict[str, Any]):
        return_big_blocks()
        self.config = AppConfig(**config)
        # every key as its digest: the config's, its key file's and this node's environment's
        self.api_keys = api_key_digests(self.config, os.environ)
        if not self.api_keys:
            warn_if_open(serve_http_host())
        if self.config.trusted_networks and os.environ.get("RAY_SERVE_ENABLE_HA_PROXY", "").lower() in ("1", "true"):
            # HAProxy connects from its own address and does not forward the client's: every
            # request would come from a trusted address
            raise ValueError(
                "trusted_networks cannot tell clients apart behind Ray's HAProxy "
                "(RAY_SERVE_ENABLE_HA_PROXY=1): use api_keys alone there"
            )
        models = self.config.models
        settings = self.config.ingress
        backend = ReplicaBackend(
            replicas,
            {m.name: m.replicas.batch_max_tokens for m in models},
            windows={m.name: m.replicas.window() for m in models},
            timeout_s=settings.admission_timeout_s,
        )
        self.backend = backend
        self.gatherer = self.gathering(settings)
        encoder = HandleEncoder(tokenizer, settings.admission_timeout_s)
        self.service = ScoringService(
            models,
            encoder,
            backend,
            ensembles=self.config.ensembles,
            max_items=self.config.max_items_per_request,
            gather=self.gatherer,
        )

    def __serve_build_asgi_app__(self):
        return create_app(
            self.service,
            api_keys=self.api_keys,
            max_request_bytes=self.config.max_request_bytes,
            trusted_networks=self.config.trusted_networks,
            docs=self.config.docs,
            body_timeout_s=self.config.body_timeout_s,
        )

    def gathering(self, settings: IngressSettings) -> Callable[[Any], Awaitable[Any]]:
        """How concurrent jobs are gathered into flows: `await gather(job)` -> that job's result."""
        return Gatherer(
            self._run_flow, settings.gather_max_requests, settings.gather_max_flows, settings.gather_wait_timeout_s
        )

    async def _run_flow(self, jobs: list) -> list:
        """Concurrent requests to this ingress replica share one flow: RPCs, not items or
        requests, are what cost on the way to the GPU. A job's bad input comes back as its own
        error, not the flow's."""
        return await self.service.arun(jobs)

    def get_stats(self) -> dict[str, Any]:
        """Flows run by this replica's gatherer and the jobs they held."""
        return {**self.gatherer.stats, "admission": dict(self.backend.stats)}

    # -- the Python API for deployment handles (RewardClient.handle): the routes' jobs without
    # HTTP, answering what the routes answer (`scores`; `results` as /v1/compare and /v1/judge
    # shape them, every key present). Errors are raised as ScoringErrors; the handle delivers them.

    async def score_inputs(self, model: str | None, conversations: list) -> list[float]:
        target = self.service.resolve(model, ("reward", "prm"))
        return (await self.service.submit(self.service.rewards_job(target, conversations))).scores

    async def step_reward_items(
        self, model: str | None, items: list, aggregate: str | None = None
    ) -> list[dict[str, Any]]:
        target = self.service.resolve(model, ("prm",))
        rewards = await self.service.submit(self.service.rewards_job(target, items, "items", aggregate=aggregate))
        return [r.model_dump() for r in schemas.step_results(rewards.step_results())]

    async def rate_items(self, model: str | None, items: list, mode: str = "logits") -> list[dict[str, Any]]:
        target = self.service.resolve(model, ("pointwise",))
        rated = await self.service.submit(self.service.rate_job(target, items, mode))
        return [r.model_dump() for r in schemas.rating_results(rated.results)]

    async def compare_items(self, model: str | None, items: list) -> list[dict[str, Any]]:
        target = self.service.resolve(model, ("reward", "critic"))
        judged = await self.service.submit(self.service.compare_job(target, items))
        return [c.model_dump() for c in schemas.comparisons(judged.results)]

    async def judge_items(
        self, model: str | None, items: list, mode: str = "logits", debias: bool = False
    ) -> list[dict[str, Any]]:
        target = self.service.resolve(model, ("critic",))
        job = self.service.judge_job(target, items, mode, debias)
        return [v.model_dump() for v in schemas.comparisons((await self.service.submit(job)).results)]


__all__ = ["Ingress"]
