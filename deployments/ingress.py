"""The Serve ingress: the request core (cluster/core/service.py) over deployment handles, with the
HTTP routes (cluster/http/app.py) and the Python handle API as its two front doors.

Flow per request: the route (or handle method) resolves the model and builds a job; concurrent
jobs reaching this replica are gathered (`@serve.batch`) into one flow: one tokenizer call per
model, then the sequences of every job planned into replica calls under the replica's token budget
and sent at once (the replicas gather calls from all ingress replicas again into one forward pass),
then results back per job in input order.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve

from cluster.core.config import AppConfig
from cluster.core.service import ScoringService
from cluster.http.app import create_app
from deployments.handles import HandleEncoder, ReplicaBackend


@serve.ingress()  # the app is built on the replica, over this replica's service (__serve_build_asgi_app__)
class Ingress:
    def __init__(self, config: dict[str, Any], tokenizer, replicas: dict[str, Any]):
        # keys from the environment too, validated as the config's own
        env_keys = [k.strip() for k in os.environ.get("SCORING_API_KEYS", "").split(",") if k.strip()]
        self.config = AppConfig(**{**config, "api_keys": list(config.get("api_keys", [])) + env_keys})
        models = self.config.models
        backend = ReplicaBackend(replicas, {m.name: m.replicas.batch_max_tokens for m in models},
                                 alone=frozenset(m.name for m in models if not m.replicas.cross_request_batching))
        self.service = ScoringService(models, HandleEncoder(tokenizer), backend, ensembles=self.config.ensembles,
                                      max_items=self.config.max_items_per_request, gather=self._gathered)
        self.api_keys = list(self.config.api_keys)

    def __serve_build_asgi_app__(self):
        return create_app(self.service, api_keys=self.api_keys, max_request_bytes=self.config.max_request_bytes,
                          trusted_networks=self.config.trusted_networks)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002, max_concurrent_batches=4)
    async def _gathered(self, jobs: list) -> list:
        """Concurrent requests to this ingress replica share one flow: RPCs, not items or
        requests, are what cost on the way to the GPU. A job's bad input comes back as its own
        error, not the batch's."""
        return await self.service.arun(jobs)

    # -- the Python API for deployment handles (RewardClient.handle): the routes' jobs without
    # HTTP. Errors are raised as ScoringErrors; the handle delivers them to the caller.

    async def score_inputs(self, model: str | None, conversations: list) -> list[float]:
        target = self.service.resolve(model, ("reward",))
        return (await self.service.submit(self.service.rewards_job(target, conversations))).scores

    async def compare_items(self, model: str | None, items: list) -> list[dict[str, Any]]:
        target = self.service.resolve(model, ("reward", "critic"))
        return [c.__dict__ for c in (await self.service.submit(self.service.compare_job(target, items))).results]

    async def judge_items(self, model: str | None, items: list, mode: str = "logits",
                          debias: bool = False) -> list[dict[str, Any]]:
        target = self.service.resolve(model, ("critic",))
        job = self.service.judge_job(target, items, mode, debias)
        return [v.__dict__ for v in (await self.service.submit(job)).results]


__all__ = ["Ingress"]
