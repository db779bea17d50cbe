"""Our own routes: /healthz, /v1/models, /v1/rewards, /v1/compare, /v1/judge, /v1/step_rewards
(process reward models) and /v1/rate (pointwise judges)."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from cluster.core.service import ScoringService
from cluster.http import schemas
from cluster.http.schemas import ok, usage
from cluster.kinds import NAMES


def router(service: ScoringService) -> APIRouter:
    r = APIRouter()

    @r.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @r.get("/v1/models", response_model=schemas.ModelsResponse)
    async def models() -> JSONResponse:
        """Every served model and ensemble, in the OpenAI shape vLLM clients read (`data[i].id`)."""
        defaults = {m.name for m in (service.default_model(k) for k in NAMES) if m is not None}
        lengths = {m.name: m.max_length for m in service.models}
        now = int(time.time())
        cards = []
        for m in service.models:
            shaping = getattr(m, "shaping", None)
            cards.append(
                schemas.ModelCard(
                    id=m.name,
                    created=now,
                    root=m.path,
                    max_model_len=m.max_length,
                    name=m.name,
                    kind=m.kind,
                    max_length=m.max_length,
                    default=m.name in defaults,
                    aliases=list(getattr(m, "aliases", ())),
                    shaping=shaping.model_dump() if shaping else None,
                )
            )
        for e in service.ensembles:
            length = min(lengths[m.model] for m in e.members)
            cards.append(
                schemas.ModelCard(
                    id=e.name,
                    created=now,
                    max_model_len=length,
                    name=e.name,
                    kind="reward",
                    max_length=length,
                    default=False,
                    members={m.model: m.weight for m in e.members},
                    shaping=e.shaping.model_dump() if e.shaping else None,
                )
            )
        return ok(schemas.ModelsResponse(data=cards))

    @r.post("/v1/rewards", response_model=schemas.RewardsResponse)
    async def rewards(body: schemas.RewardsRequest) -> JSONResponse:
        """A reward per conversation; a prm's is the aggregate of its steps (the assistant message
        split at its step_separator), with the step rewards beside."""
        model = service.resolve(body.model, ("reward", "prm"))
        inputs = [c if isinstance(c, str) else [m.model_dump() for m in c] for c in body.conversations]
        result = await service.submit(service.rewards_job(model, inputs))
        labels = (await service.head(model.name))["labels"] if result.values is not None else None
        return ok(
            schemas.RewardsResponse(
                model=model.name,
                scores=result.scores,
                truncated=result.truncated,
                raw_scores=result.raw,
                values=result.values,
                labels=labels,
                step_rewards=result.steps,
                aggregate=result.aggregate,
                usage=usage(result.tokens),
            )
        )

    @r.post("/v1/step_rewards", response_model=schemas.StepRewardsResponse)
    async def step_rewards(body: schemas.StepRewardsRequest) -> JSONResponse:
        model = service.resolve(body.model, ("prm",))
        items = [[m.model_dump() for m in it] if isinstance(it, list) else it for it in body.items]  # plain messages
        result = await service.submit(service.rewards_job(model, items, "items", aggregate=body.aggregate))
        return ok(
            schemas.StepRewardsResponse(
                model=model.name,
                aggregate=result.aggregate,
                usage=usage(result.tokens),
                results=schemas.step_results(result.step_results()),
            )
        )

    @r.post("/v1/rate", response_model=schemas.RateResponse)
    async def rate(body: schemas.RateRequest) -> JSONResponse:
        model = service.resolve(body.model, ("pointwise",))
        rated = await service.submit(service.rate_job(model, body.items, body.mode))
        return ok(
            schemas.RateResponse(
                model=model.name,
                ratings=list(model.ratings),
                usage=usage(rated.tokens),
                results=schemas.rating_results(rated.results),
            )
        )

    @r.post("/v1/compare", response_model=schemas.CompareResponse)
    async def compare(body: schemas.CompareRequest) -> JSONResponse:
        model = service.resolve(body.model, ("reward", "critic"))
        judged = await service.submit(service.compare_job(model, body.judge_items()))
        return ok(
            schemas.CompareResponse(
                model=model.name,
                kind=model.kind,
                usage=usage(judged.tokens),
                results=schemas.comparisons(judged.results),
            )
        )

    @r.post("/v1/judge", response_model=schemas.CompareResponse)
    async def judge(body: schemas.JudgeRequest) -> JSONResponse:
        model = service.resolve(body.model, ("critic",))
        items = [i.model_dump() for i in body.items]
        judged = await service.submit(service.judge_job(model, items, body.mode, body.debias))
        return ok(
            schemas.CompareResponse(
                model=model.name, kind="critic", usage=usage(judged.tokens), results=schemas.comparisons(judged.results)
            )
        )

    return r
