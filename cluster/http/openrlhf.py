"""OpenRLHF's remote reward protocol: POST /get_reward with `query` (templated prompt + response).

Replayed from OpenRLHF's own client in tests/clients/test_openrlhf.py. What its clients do, and
what this route does about it:
- 0.9 to 0.11.0 send one query per request and an empty shard (`{"query": []}`) to every other
  `--reward.remote_url` server: answered with empty lists, not an error (their client would drop
  the whole sample's reward after 5 retries).
- <= 0.8 decoded left-padded prompts and right-padded responses with the special tokens; their
  server stripped the padding (openrlhf/cli/serve_rm.py `strip_sequence`), so this route does too.
- `extra_logs` is merged into OpenRLHF's per-sample metrics, overwriting keys of the same name
  (`truncated`, `reward`, `score`, ...): ours are prefixed `rm_` and numeric, one per query.
- No header can be set: the API key goes in the URL (`?api_key=...`) or the client's network is
  trusted (see cluster/http/app.py Guard).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from cluster.core.inputs import EncodeOptions
from cluster.core.service import ScoringService
from cluster.http import schemas
from cluster.http.schemas import ok

OPTIONS = EncodeOptions(strip_padding=True)


def router(service: ScoringService) -> APIRouter:
    r = APIRouter()

    @r.post("/get_reward", response_model=schemas.GetRewardResponse)
    async def get_reward(body: schemas.GetRewardRequest) -> JSONResponse:
        model = service.resolve(body.model, ("reward",))
        if not body.query:
            return ok(schemas.GetRewardResponse(rewards=[], scores=[], extra_logs={"rm_truncated": []}))
        result = await service.submit(service.rewards_job(model, body.query, "query", OPTIONS))
        return ok(
            schemas.GetRewardResponse(
                rewards=result.scores,
                scores=result.scores,
                extra_logs={"rm_truncated": [float(t) for t in result.truncated]},
            )
        )

    return r
