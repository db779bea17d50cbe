"""Scoring cluster: reward models and critics that match their model cards exactly.

The package's layers (see the README's Layout):
    cluster.core    the request core: specs, errors, input checks, batching plans, results, the scoring
                    service (no torch, no Ray, no FastAPI)
    cluster.kinds   one module per model kind (reward, critic, prm, pointwise): what is kind-specific
    cluster.engine  torch: encoders, runners, loading, placement, the in-process backend
    cluster.http    the HTTP routes over the core (FastAPI, no Ray)
    cluster.data    Ray Data pipeline, corpus shapes, metrics, reports, Ray Jobs
    cluster.client  RewardClient and the RL frameworks' reward functions
    cluster.cli     `python -m cluster ...`;   cluster.bench: the benchmarks
    deployments     the Ray Serve layer (ingress, tokenizer, replicas, build_app)

Exports are lazy: `from cluster import RewardClient` or `ScoringError` imports neither torch nor
pyarrow; `load_model` and the pipeline import them when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cluster.core.version import __version__  # noqa: F401 - the package's version

# public name -> module that defines it
_EXPORTS = {
    "ScoringError": "cluster.core.errors",
    "ConfigError": "cluster.core.errors",
    "InputTooLong": "cluster.core.errors",
    "InvalidInput": "cluster.core.errors",
    "ModelFailure": "cluster.core.errors",
    "ModelLoadError": "cluster.core.errors",
    "ModelSpec": "cluster.core.config",
    "ChatEncoder": "cluster.engine.encoders",
    "Encoded": "cluster.core.inputs",
    "plan_batches": "cluster.core.batching",
    "run_batched": "cluster.core.batching",
    "pad_batch": "cluster.engine.runner",
    "Verdict": "cluster.core.results",
    "Comparison": "cluster.core.results",
    "RewardResult": "cluster.core.results",
    "CriticModel": "cluster.engine.critic",
    "RewardModel": "cluster.engine.reward",
    "PrmModel": "cluster.engine.prm",
    "PointwiseModel": "cluster.engine.rating",
    "StepRewards": "cluster.core.results",
    "Rating": "cluster.core.results",
    "load_model": "cluster.engine.loading",
    "RewardClient": "cluster.client.reward_client",
    "ScoringOptions": "cluster.data.pipeline",
    "filter_pairs": "cluster.data.pipeline",
    "filter_solutions": "cluster.data.pipeline",
    "read_scores": "cluster.data.pipeline",
    "score_corpus": "cluster.data.pipeline",
    "score_dataset": "cluster.data.pipeline",
}

__all__ = [
    "ChatEncoder",
    "Comparison",
    "ConfigError",
    "CriticModel",
    "Encoded",
    "InputTooLong",
    "InvalidInput",
    "ModelFailure",
    "ModelLoadError",
    "ModelSpec",
    "PointwiseModel",
    "PrmModel",
    "Rating",
    "RewardClient",
    "RewardModel",
    "RewardResult",
    "ScoringError",
    "ScoringOptions",
    "StepRewards",
    "Verdict",
    "filter_pairs",
    "filter_solutions",
    "load_model",
    "pad_batch",
    "plan_batches",
    "read_scores",
    "run_batched",
    "score_corpus",
    "score_dataset",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from cluster.client.reward_client import RewardClient
    from cluster.core.batching import plan_batches, run_batched
    from cluster.core.config import ModelSpec
    from cluster.core.errors import ConfigError, InputTooLong, InvalidInput, ModelFailure, ModelLoadError, ScoringError
    from cluster.core.inputs import Encoded
    from cluster.core.results import Comparison, Rating, RewardResult, StepRewards, Verdict
    from cluster.data.pipeline import (
        ScoringOptions,
        filter_pairs,
        filter_solutions,
        read_scores,
        score_corpus,
        score_dataset,
    )
    from cluster.engine.critic import CriticModel
    from cluster.engine.encoders import ChatEncoder
    from cluster.engine.loading import load_model
    from cluster.engine.prm import PrmModel
    from cluster.engine.rating import PointwiseModel
    from cluster.engine.reward import RewardModel
    from cluster.engine.runner import pad_batch
