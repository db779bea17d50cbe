"""vLLM's classify API (what verl's reward loop calls): POST /classify, every label's value per item."""

from __future__ import annotations

import math
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cluster.core.config import Ensemble
from cluster.core.results import sigmoid
from cluster.core.service import ScoringService
from cluster.http import schemas
from cluster.http.app import request_id
from cluster.http.schemas import ok, usage


def classify_activation(values: list[float], problem_type: str | None) -> list[float]:
    """vLLM's classify activation (vllm-project/vllm@1c713679,
    vllm/model_executor/layers/pooler/activations.py: get_classification_activation_function and
    PoolerClassify): identity for regression heads, sigmoid per label for multi-label ones, else
    sigmoid for one label and softmax over several."""
    if problem_type == "regression":
        return list(values)
    if problem_type == "multi_label_classification" or len(values) == 1:
        return [sigmoid(v) for v in values]
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def router(service: ScoringService) -> APIRouter:
    r = APIRouter()

    @r.post("/classify", response_model=schemas.ClassifyResponse)
    async def classify(body: schemas.ClassifyRequest, request: Request) -> JSONResponse:
        """As vLLM returns them; a one-label model's probs is [reward]. Shaping applies to one-label
        models (whose one value is the reward); an ensemble answers with its combined reward."""
        model = service.resolve(body.model, ("reward",))
        if body.messages is not None:
            inputs, what = [[m.model_dump() for m in body.messages]], "messages"
        else:
            inputs, what = ([body.input] if isinstance(body.input, str) else body.input), "input"
        result = await service.submit(service.rewards_job(model, inputs, what))
        head = {"labels": ["LABEL_0"], "problem_type": None}
        if not isinstance(model, Ensemble):
            head = await service.head(model.name)
        rows = result.values if result.values is not None else [[s] for s in result.scores]
        if body.apply_activation():
            rows = [classify_activation(row, head["problem_type"]) for row in rows]
        data = [schemas.ClassifyData(index=i, label=head["labels"][max(range(len(row)), key=row.__getitem__)],
                                     probs=row, num_classes=len(row)) for i, row in enumerate(rows)]
        return ok(schemas.ClassifyResponse(id=f"classify-{request_id(request)}", created=int(time.time()),
                                           model=model.name, data=data, usage=usage(result.tokens)))

    return r
