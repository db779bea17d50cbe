"""What the protocol modules share: a reward model's per-label values for a request, the
classification activation the inference servers apply, and the error styles built from a
status table."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from cluster.core.config import Ensemble, ModelSpec
from cluster.core.inputs import EncodeOptions
from cluster.core.results import sigmoid
from cluster.core.service import Rewards, ScoringService

ONE_LABEL = {"labels": ["LABEL_0"], "problem_type": None}


async def label_values(
    service: ScoringService, model: ModelSpec | Ensemble, inputs: list, what: str, options: EncodeOptions | None = None
) -> tuple[Rewards, list[list[float]], dict[str, Any]]:
    """(the rewards, every label's value per item, the head's labels and problem type). A one-label
    model's value is its reward, shaped when the model has shaping (what an RL client reads as the
    reward); a multi-output model gives its raw outputs; an ensemble its combined reward."""
    result = await service.submit(service.rewards_job(model, inputs, what, options))
    head = ONE_LABEL if isinstance(model, Ensemble) else await service.head(model.name)
    rows = result.values if result.values is not None else [[s] for s in result.scores]
    return result, rows, head


def classify_activation(values: list[float], problem_type: str | None) -> list[float]:
    """vLLM's classify activation (vllm-project/vllm@1c713679,
    vllm/model_executor/layers/pooler/activations.py: get_classification_activation_function and
    PoolerClassify): identity for regression heads, sigmoid per label for multi-label ones, else
    sigmoid for one label and softmax over several. TEI's /predict without raw_scores is the same
    (router/src/... core/src/infer.rs `predict`: sigmoid for one label, softmax otherwise)."""
    if problem_type == "regression":
        return list(values)
    if problem_type == "multi_label_classification" or len(values) == 1:
        return [sigmoid(v) for v in values]
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def top_label(row: list[float], labels: list[str]) -> str:
    return labels[max(range(len(row)), key=row.__getitem__)]


def status_style(statuses: dict[int, int], body: Callable[[Any, int], dict]):
    """An ErrorStyle: our status mapped through `statuses` (e.g. 422 -> 400), then `body(failure, status)`."""

    def style(f) -> tuple[int, dict]:
        status = statuses.get(f.status, f.status)
        return status, body(f, status)

    return style
