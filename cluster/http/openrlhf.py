"""OpenRLHF's remote reward protocol: POST /get_reward with `query` (templated prompt + response)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from cluster.core.service import ScoringService
from cluster.http import schemas
from cluster.http.schemas import ok


def router(service: ScoringService) -> APIRouter:
    r = APIRouter()

    @r.post("/get_reward", response_model=schemas.GetRewardResponse)
    async def get_reward(body: schemas.GetRewardRequest) -> JSONResponse:
        model = service.resolve(body.model, ("reward",))
        result = await service.submit(service.rewards_job(model, body.query, "query"))
        return ok(schemas.GetRewardResponse(rewards=result.scores, scores=result.scores,
                                            extra_logs={"truncated": result.truncated}))

    return r
