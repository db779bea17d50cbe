"""bench-serve's baselines, kept out of the serving path: the Serve app as it was before
cross-request batching and before the ingress's gatherer.

`build_app` is deployments/app.py's app (bind_app) honouring the two baseline settings bench-serve
compares against; deploy it with `import_path: cluster.bench.serve_baselines:build_app`:
- `ingress.fast_path: false`: the ingress before issue 13 (`BaselineIngress`: `@serve.batch` of 64
  jobs with a 2 ms wait and 4 batches in flight, deployed with `baseline_ingress_options`);
- `replicas.cross_request_batching: false`: one forward pass per call, no gathering of calls across
  requests (`UngatheredReplica`).
deployments.app:build_app accepts both settings (a config written for bench-serve still deploys,
with the same scores) but deploys the production ingress and replicas.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from cluster.core.config import AppConfig, IngressSettings, ServedModel
from deployments import app
from deployments.ingress import Ingress
from deployments.replica import ModelReplica


class BaselineIngress(Ingress):
    """The ingress before issue 13: concurrent jobs gathered by `@serve.batch` (64 jobs, a 2 ms
    wait, 4 batches in flight) instead of the Gatherer."""

    def gathering(self, settings: IngressSettings):
        return self._gathered

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002, max_concurrent_batches=4)
    async def _gathered(self, jobs: list) -> list:
        return await self.service.arun(jobs)

    def get_stats(self) -> dict[str, Any]:
        return {"admission": dict(self.backend.stats)}


def baseline_ingress_options(settings: IngressSettings) -> dict[str, Any]:
    """The ingress's Serve options before issue 13, as deployed then: one replica, 512 requests."""
    return dict(name="ingress", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0})


def ingress_options(settings: IngressSettings) -> dict[str, Any]:
    """deployments.app's ingress options, or the baseline's with `fast_path: false`."""
    return app.ingress_options(settings) if settings.fast_path else baseline_ingress_options(settings)


class UngatheredReplica(ModelReplica):
    """A model replica that runs each call as its own forward pass (no `@serve.batch` gathering
    calls across requests): `cross_request_batching: false`."""

    async def score(self, call: dict[str, Any]) -> list[tuple[float, list[float] | None]]:
        return (await self._gathered([call], "score"))[0]

    async def verdicts(self, call: dict[str, Any]) -> list[float]:
        return (await self._gathered([call], "verdicts"))[0]

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        # no @serve.batch to tune: the runner's settings only, the rest recorded for describe()
        super().reconfigure(
            {k: v for k, v in user_config.items() if k not in ("batch_max_tokens", "batch_wait_timeout_s")}
        )
        self.batching.update(user_config)


def replica_class(model: ServedModel) -> type:
    return ModelReplica if model.replicas.cross_request_batching else UngatheredReplica


def build_app(args: dict[str, Any]):
    """deployments.app:build_app with the baselines the config asks for."""
    config = AppConfig.parse(args)
    ingress = BaselineIngress if not config.ingress.fast_path else Ingress
    return app.bind_app(
        config, ingress_class=ingress, ingress_opts=ingress_options(config.ingress), replica_class=replica_class
    )
