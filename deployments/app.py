"""`build_app(args)`: the Serve application that `ray_config.yaml` (import_path:
deployments.app:build_app) and the demo deploy.

One tokenizer deployment (CPU, autoscaled), one replica deployment per model (its own resources:
`num_gpus: 1` pins one replica per GPU), and the HTTP ingress that routes by the request's `model`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ray import serve

from cluster.core.config import AppConfig, IngressSettings, ServedModel, deployment_name, key_digest
from deployments.ingress import Ingress
from deployments.replica import ModelReplica
from deployments.tokenizer import Tokenizer


def replica_options(model: ServedModel) -> dict[str, Any]:
    """The Serve deployment options of one model's replicas. `num_gpus` is what Ray gives each
    replica: 1 pins one replica per GPU; a model spread over `devices` GPUs asks for that many."""
    r = model.replicas
    autoscaling = None
    if r.max_replicas > r.min_replicas:
        autoscaling = {
            "min_replicas": r.min_replicas,
            "max_replicas": r.max_replicas,
            "target_ongoing_requests": r.target_ongoing_requests,
        }
    return dict(
        name=deployment_name(model.kind, model.name),
        num_replicas=None if autoscaling else r.min_replicas or 1,
        autoscaling_config=autoscaling,
        ray_actor_options={"num_gpus": r.num_gpus, "num_cpus": r.num_cpus},
        max_ongoing_requests=r.max_ongoing_requests,
        max_queued_requests=r.max_queued_requests,
        user_config={**r.user_config(), "max_batch_tokens": model.max_batch_tokens},
        health_check_period_s=10,
        health_check_timeout_s=60,
        graceful_shutdown_timeout_s=30,
    )


def ingress_options(settings: IngressSettings) -> dict[str, Any]:
    """The ingress's Serve options: autoscaled on the requests each replica holds (min == max: that
    many replicas, fixed). CPU only; `num_cpus: 0` by default (it mostly waits on the replicas)."""
    autoscaling = None
    if settings.max_replicas > settings.min_replicas:
        autoscaling = {
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        }
    return dict(
        name="ingress",
        num_replicas=None if autoscaling else settings.min_replicas,
        autoscaling_config=autoscaling,
        ray_actor_options={"num_cpus": settings.num_cpus},
        max_ongoing_requests=settings.max_ongoing_requests,
    )


def replica_deployment(model: ServedModel, replica_class: type = ModelReplica):
    return serve.deployment(replica_class, **replica_options(model)).bind(model.spec().model_dump())


def build_app(args: dict[str, Any]):
    """Validate `args` (AppConfig; unknown keys rejected) and bind the deployment graph."""
    config = AppConfig.parse(args)
    # bench-serve's baselines are deployed by import_path cluster.bench.serve_baselines:build_app; a
    # config that asks for one still deploys here, the production way (the same scores)
    baselines = ["ingress.fast_path: false"] if not config.ingress.fast_path else []
    baselines += [
        f"models[{k}].replicas.cross_request_batching: false"
        for k, m in enumerate(config.models)
        if not m.replicas.cross_request_batching
    ]
    if baselines:
        logging.getLogger("ray.serve").warning(
            "%s: a benchmark baseline, deployed by import_path cluster.bench.serve_baselines:build_app; "
            "deployments.app:build_app deploys the production ingress and replicas",
            ", ".join(baselines),
        )
    return bind_app(config)


def bind_app(
    config: AppConfig,
    *,
    ingress_class: type = Ingress,
    ingress_opts: dict[str, Any] | None = None,
    replica_class: Callable[[ServedModel], type] = lambda model: ModelReplica,
):
    """The deployment graph of a validated config: the tokenizer, one replica deployment per model
    (of `replica_class(model)`) and the ingress (`ingress_class`, deployed with `ingress_opts`,
    by default `ingress_options(config.ingress)`)."""
    specs = [m.spec().model_dump() for m in config.models]
    tok = config.tokenizer
    tokenizer = serve.deployment(
        Tokenizer,
        name="tokenizer",
        autoscaling_config={
            "min_replicas": tok.min_replicas,
            "max_replicas": tok.max_replicas,
            "target_ongoing_requests": 8,
        },
        ray_actor_options={"num_cpus": tok.num_cpus},
        max_ongoing_requests=64,
    ).bind(specs)
    replicas = {m.name: replica_deployment(m, replica_class(m)) for m in config.models}
    ingress = serve.deployment(ingress_class, **(ingress_opts or ingress_options(config.ingress)))
    # the keys reach the ingress as digests only: Serve stores a deployment's arguments
    return ingress.bind(
        config.model_dump() | {"api_keys": [key_digest(k) for k in config.api_keys]}, tokenizer, replicas
    )
