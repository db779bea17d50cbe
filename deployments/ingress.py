"""HTTP ingress (FastAPI via @serve.ingress): validation, auth, limits, routing, one error table.

Flow per request: pydantic body -> the tokenizer deployment (one call for the whole request) ->
the model's replicas (token ids only; the request split into chunks that fit a replica's batch
budget, sent concurrently, so big requests spread over replicas and small ones from many callers
are gathered into one forward pass) -> results in input order.
"""


import asyncio
import hmac
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError

from cluster.http import schemas
from cluster.core.config import AppConfig, Ensemble
from cluster.core.critic import Verdict, combine, winner_of
from cluster.core.errors import (
    InvalidInput,
    ModelFailure,
    Overloaded,
    RequestTooLarge,
    ScoringError,
    Unauthorized,
    UnknownModel,
    http_status,
)
from cluster.core.reward import pair_comparisons, pair_conversations, sigmoid
from cluster.core.tokenization import check_list, validate_judge_item
from deployments.replica import call

logger = logging.getLogger("ray.serve")
RETRY_AFTER_S = 1
OPEN_PATHS = {"/healthz"}

app = FastAPI(title="scoring-cluster", version="0.1.0")


def unwrap(err: BaseException) -> BaseException:
    """A replica's exception arrives wrapped in RayTaskError; the cause is what the user caused."""
    while isinstance(err, RayTaskError) and getattr(err, "cause", None) is not None:
        err = err.cause
    return err


def error_response(err: BaseException, request_id: str) -> JSONResponse:
    err = unwrap(err)
    if isinstance(err, BackPressureError):
        err = Overloaded("the model's queue is full; retry after a moment")
    if isinstance(err, ScoringError):
        status, code, message = http_status(err), err.code, err.message
    else:
        status, code, message = 500, "internal_error", "internal error; quote the request id to the operator"
    if status >= 500:
        logger.error("request %s failed: %s: %s", request_id, type(err).__name__, err)
    body = schemas.ErrorResponse(error=schemas.ErrorBody(code=code, message=message, request_id=request_id))
    headers = {}  # the Serve proxy sets X-Request-Id itself
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def describe(err: ValidationError) -> str:
    """`conversations.0.1.role: Input should be 'system', 'user' or 'assistant'; ...`"""
    problems = []
    for e in err.errors()[:10]:
        # drop union-member labels such as "list[Message]" / "str" from the location
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p == "str")))
        problems.append(f"{loc or 'body'}: {e['msg']}")
    return "; ".join(problems)


def request_id(request: Request) -> str:
    """Serve's own request id (it arrives as x-request-id and goes back in the response header)."""
    if not hasattr(request.state, "request_id"):
        request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    return request.state.request_id


@dataclass(frozen=True)
class Rewards:
    """A reward request's results, in input order."""

    scores: list[float]  # the scalar reward (shaped when the model or ensemble has shaping)
    truncated: list[bool]
    tokens: int
    values: list[list[float]] | None = None  # every output label, for a model with several
    raw: list[float] | None = None  # the model's scalar before shaping, when shaping changed it


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


class ScoringService:
    """The routes' logic over deployment handles (no HTTP here)."""

    def __init__(self, config: AppConfig, tokenizer, replicas: dict[str, Any]):
        self.config = config
        self.tokenizer = tokenizer
        self.replicas = replicas
        self.models = {m.name: m for m in config.models}
        self.ensembles = {e.name: e for e in config.ensembles}
        self._heads: dict[str, dict[str, Any]] = {}

    async def head(self, name: str) -> dict[str, Any]:
        """A served reward model's output labels and problem type (read from a replica, once)."""
        if name not in self._heads:
            info = await self.replicas[name].describe.remote()
            self._heads[name] = {"labels": info["labels"], "problem_type": info["problem_type"]}
        return self._heads[name]

    def resolve(self, name: str | None, kinds: tuple[str, ...]) -> Any:
        if name is None:
            for kind in kinds:
                default = self.config.default_model(kind)
                if default is not None:
                    return default
            raise UnknownModel(f"no {' or '.join(kinds)} model is served here")
        if name in self.ensembles and "reward" in kinds:
            return self.ensembles[name]
        model = self.models.get(name)
        if model is None:
            kind = "a critic" if name in self.ensembles else None
            raise UnknownModel(f"model '{name}' is not served here; see GET /v1/models" if kind is None
                               else f"'{name}' is an ensemble of reward models; this route needs {kind}")
        if model.kind not in kinds:
            raise InvalidInput(f"model '{name}' is a {model.kind}; this route needs a {' or '.join(kinds)}")
        return model

    def check_count(self, n: int) -> None:
        if n > self.config.max_items_per_request:
            raise RequestTooLarge(f"{n} items in one request; the limit is {self.config.max_items_per_request}")

    async def _fan_out(self, model, method: str, seqs: list[list[int]]) -> list:
        """Split into chunks that fit the replica's gather budget; send them concurrently."""
        budget = model.replicas.batch_max_tokens
        chunks, current, tokens = [], [], 0
        for seq in seqs:
            if current and tokens + len(seq) > budget:
                chunks.append(current)
                current, tokens = [], 0
            current.append(seq)
            tokens += len(seq)
        if current:
            chunks.append(current)
        if not model.replicas.cross_request_batching:
            method += "_alone"
        handle = getattr(self.replicas[model.name], method)
        try:
            outputs = await asyncio.gather(*(handle.remote(call(c)) for c in chunks))
        except (RayActorError, ActorUnavailableError) as err:
            # a replica died or restarted mid-call: scoring is idempotent, so the caller may retry
            raise Overloaded(f"a replica of model '{model.name}' became unavailable; retry") from err
        return [x for out in outputs for x in out]

    async def rewards(self, model, inputs: list, what: str = "conversations") -> Rewards:
        self.check_count(len(inputs))
        if model.replicas.cross_request_batching:
            result = await self._gathered_rewards((model.name, inputs, what))
            if isinstance(result, BaseException):
                raise result
            encoded, outputs = result
        else:  # the baseline: this request's own tokenizer call and replica call
            encoded = await self.tokenizer.encode_inputs.remote(model.name, inputs, what)
            outputs = await self._fan_out(model, "score", [ids for ids, _ in encoded])
        # each output is (scalar, every label's value or None for a one-label model)
        values = [v for _, v in outputs] if outputs and outputs[0][1] is not None else None
        return Rewards([s for s, _ in outputs], [t for _, t in encoded], sum(len(ids) for ids, _ in encoded), values)

    async def shaped_rewards(self, target, inputs: list, what: str = "conversations") -> Rewards:
        """Rewards as the routes return them: a model's own shaping (normalize, clip), or an
        ensemble's members' shaped rewards combined by weight, then the ensemble's shaping."""
        if isinstance(target, Ensemble):
            members = [self.models[m.model] for m in target.members]
            results = await asyncio.gather(*(self.shaped_rewards(m, inputs, what) for m in members))
            truncated = [any(flags) for flags in zip(*(r.truncated for r in results))]
            return Rewards(target.combine([r.scores for r in results]), truncated, sum(r.tokens for r in results))
        result = await self.rewards(target, inputs, what)
        if target.shaping is None:
            return result
        return replace(result, scores=target.shaping.apply(result.scores), raw=result.scores)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002, max_concurrent_batches=4)
    async def _gathered_rewards(self, requests: list[tuple[str, list, str]]) -> list:
        """Concurrent reward requests to this ingress replica share one tokenizer call and one set
        of replica calls per model: RPCs, not items or requests, are what cost on the way to the
        GPU. A request's bad input comes back as its own error, not the batch's."""
        by_model: dict[str, list[int]] = {}
        for i, (name, _, _) in enumerate(requests):
            by_model.setdefault(name, []).append(i)
        results: list = [None] * len(requests)

        async def one_model(name: str, indices: list[int]) -> None:
            encoded = await self.tokenizer.encode_many.remote(name, [requests[i][1:] for i in indices])
            good = [(i, enc) for i, enc in zip(indices, encoded) if not isinstance(enc, BaseException)]
            for i, enc in zip(indices, encoded):
                if isinstance(enc, BaseException):
                    results[i] = enc
            outputs = await self._fan_out(self.models[name], "score", [ids for _, enc in good for ids, _ in enc])
            at = 0
            for i, enc in good:
                results[i] = (enc, outputs[at:at + len(enc)])
                at += len(enc)

        await asyncio.gather(*(one_model(name, idx) for name, idx in by_model.items()))
        return results

    async def compare(self, model, items: list[dict]) -> tuple[list[dict], int]:
        """Pairs judged by a critic (logits mode) or by a reward model / ensemble (sigmoid of the
        reward difference); one implementation for HTTP and handle callers."""
        if model.kind == "critic":
            return await self.judge(model, items, "logits", debias=False)
        result = await self.shaped_rewards(model, pair_conversations(items), "items")
        return [c.__dict__ for c in pair_comparisons(result.scores, result.truncated)], result.tokens

    async def judge(self, model, items: list[dict], mode: str, debias: bool) -> tuple[list[dict], int]:
        """Verdicts; with debias both orders go to the replicas together, as in CriticModel.judge."""
        self.check_count(len(items))
        orders = [False, True] if debias else [False]
        encoded = await asyncio.gather(*(self.tokenizer.encode_judge_items.remote(model.name, items, s)
                                         for s in orders))
        both = [e for enc in encoded for e in enc]
        seqs = [ids for ids, _ in both]
        if mode == "logits":
            probs = await self._fan_out(model, "verdict_probs", seqs)
            verdicts = [Verdict(winner_of(p), p, t) for p, (_, t) in zip(probs, both)]
        else:
            gens = await self.replicas[model.name].generate.remote(seqs)
            verdicts = [Verdict(g["winner"], g["prob_a"], t, g["text"]) for g, (_, t) in zip(gens, both)]
        if debias:
            n = len(items)
            verdicts = [combine(a, b) for a, b in zip(verdicts[:n], verdicts[n:])]
        return [v.__dict__ for v in verdicts], sum(len(ids) for ids in seqs)


@serve.ingress(app)
class Ingress:
    def __init__(self, config: dict[str, Any], tokenizer, replicas: dict[str, Any]):
        self.config = AppConfig(**config)
        self.service = ScoringService(self.config, tokenizer, replicas)
        keys = list(self.config.api_keys)
        keys += [k.strip() for k in os.environ.get("SCORING_API_KEYS", "").split(",") if k.strip()]
        self.api_keys = [k.encode() for k in keys]

    # -- auth, limits and errors for every route

    async def _guard(self, request: Request) -> None:
        if request.url.path not in OPEN_PATHS and self.api_keys:
            header = request.headers.get("authorization", "")
            token = header[7:].encode() if header.lower().startswith("bearer ") else b""
            # compare against every key, always, so timing says nothing about which matched
            if not any([hmac.compare_digest(token, key) for key in self.api_keys]):
                raise Unauthorized("missing or invalid API key (send Authorization: Bearer <key>)")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.config.max_request_bytes:
            raise RequestTooLarge(f"request body of {length} bytes; the limit is {self.config.max_request_bytes}")

    async def _run(self, request: Request, work, schema: type[BaseModel] | None = None) -> Any:
        """Auth, then size, then the body, then the work: each failure a mapped response."""
        rid = request_id(request)
        try:
            await self._guard(request)
            if schema is None:
                result = await work()
            else:
                raw = await request.body()
                if len(raw) > self.config.max_request_bytes:
                    raise RequestTooLarge(f"request body of {len(raw)} bytes; the limit is "
                                          f"{self.config.max_request_bytes}")
                try:
                    body = schema.model_validate_json(raw)
                except ValidationError as err:
                    raise InvalidInput(describe(err)) from None
                result = await work(body)
        except Exception as err:  # noqa: BLE001 - every failure becomes a mapped response
            return error_response(err, rid)
        return JSONResponse(result.model_dump())

    # -- Python API for deployment handles (cluster.client.reward_client.RewardClient.handle): the routes' logic
    # without HTTP. Errors are raised as ScoringErrors; the handle delivers them to the caller.

    async def score_inputs(self, model: str | None, conversations: list) -> list[float]:
        resolved = self.service.resolve(model, ("reward",))
        result = await self.service.shaped_rewards(resolved, check_list(conversations, "conversations"))
        return result.scores

    async def compare_items(self, model: str | None, items: list) -> list[dict[str, Any]]:
        resolved = self.service.resolve(model, ("reward", "critic"))
        checked = [validate_judge_item(it, f"items[{i}]") for i, it in enumerate(check_list(items, "items"))]
        results, _ = await self.service.compare(resolved, checked)
        return results

    async def judge_items(self, model: str | None, items: list, mode: str = "logits",
                          debias: bool = False) -> list[dict[str, Any]]:
        resolved = self.service.resolve(model, ("critic",))
        if mode not in ("logits", "generate"):
            raise InvalidInput(f"mode: must be 'logits' or 'generate', got {mode!r}")
        checked = [validate_judge_item(it, f"items[{i}]") for i, it in enumerate(check_list(items, "items"))]
        verdicts, _ = await self.service.judge(resolved, checked, mode, bool(debias))
        return verdicts

    # -- routes

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(self, request: Request):
        async def work():
            defaults = {self.config.default_model(k).name for k in ("reward", "critic")
                        if self.config.default_model(k) is not None}
            cards = [schemas.ModelCard(name=m.name, kind=m.kind, max_length=m.max_length, default=m.name in defaults,
                                       shaping=m.shaping.model_dump() if m.shaping else None)
                     for m in self.config.models]
            lengths = {m.name: m.max_length for m in self.config.models}
            cards += [schemas.ModelCard(name=e.name, kind="reward", default=False,
                                        max_length=min(lengths[m.model] for m in e.members),
                                        members={m.model: m.weight for m in e.members},
                                        shaping=e.shaping.model_dump() if e.shaping else None)
                      for e in self.config.ensembles]
            return schemas.ModelsResponse(data=cards)
        return await self._run(request, work)

    @app.post("/v1/rewards")
    async def rewards(self, request: Request):
        async def work(body: schemas.RewardsRequest):
            model = self.service.resolve(body.model, ("reward",))
            inputs = [c if isinstance(c, str) else [m.model_dump() for m in c] for c in body.conversations]
            result = await self.service.shaped_rewards(model, inputs)
            labels = (await self.service.head(model.name))["labels"] if result.values is not None else None
            return schemas.RewardsResponse(model=model.name, scores=result.scores, truncated=result.truncated,
                                           raw_scores=result.raw, values=result.values, labels=labels,
                                           usage=schemas.Usage(prompt_tokens=result.tokens,
                                                               total_tokens=result.tokens))
        return await self._run(request, work, schemas.RewardsRequest)

    @app.post("/v1/compare")
    async def compare(self, request: Request):
        async def work(body: schemas.CompareRequest):
            model = self.service.resolve(body.model, ("reward", "critic"))
            comparisons, tokens = await self.service.compare(model, body.judge_items())
            results = [schemas.Comparison(**c) for c in comparisons]
            return schemas.CompareResponse(model=model.name, kind=model.kind, results=results,
                                           usage=schemas.Usage(prompt_tokens=tokens, total_tokens=tokens))
        return await self._run(request, work, schemas.CompareRequest)

    @app.post("/v1/judge")
    async def judge(self, request: Request):
        async def work(body: schemas.JudgeRequest):
            model = self.service.resolve(body.model, ("critic",))
            verdicts, tokens = await self.service.judge(model, [i.model_dump() for i in body.items],
                                                        body.mode, body.debias)
            return schemas.CompareResponse(model=model.name, kind="critic",
                                           results=[schemas.Comparison(**v) for v in verdicts],
                                           usage=schemas.Usage(prompt_tokens=tokens, total_tokens=tokens))
        return await self._run(request, work, schemas.JudgeRequest)

    @app.post("/get_reward")
    async def get_reward(self, request: Request):
        """OpenRLHF's remote reward protocol: `query` holds templated prompt + response text."""
        async def work(body: schemas.GetRewardRequest):
            model = self.service.resolve(body.model, ("reward",))
            result = await self.service.shaped_rewards(model, body.query, "query")
            return schemas.GetRewardResponse(rewards=result.scores, scores=result.scores,
                                             extra_logs={"truncated": result.truncated})
        return await self._run(request, work, schemas.GetRewardRequest)

    @app.post("/classify")
    async def classify(self, request: Request):
        """vLLM's classify API (what verl's reward loop calls): every label's value per item, as
        vLLM returns them; a one-label model's probs is [reward]. Shaping applies to one-label
        models (whose one value is the reward); an ensemble answers with its combined reward."""
        async def work(body: schemas.ClassifyRequest):
            model = self.service.resolve(body.model, ("reward",))
            if body.messages is not None:
                inputs, what = [[m.model_dump() for m in body.messages]], "messages"
            else:
                inputs, what = ([body.input] if isinstance(body.input, str) else body.input), "input"
            result = await self.service.shaped_rewards(model, inputs, what)
            head = {"labels": ["LABEL_0"], "problem_type": None}
            if not isinstance(model, Ensemble):
                head = await self.service.head(model.name)
            rows = result.values if result.values is not None else [[s] for s in result.scores]
            if body.apply_activation():
                rows = [classify_activation(r, head["problem_type"]) for r in rows]
            data = [schemas.ClassifyData(index=i, label=head["labels"][max(range(len(r)), key=r.__getitem__)],
                                         probs=r, num_classes=len(r)) for i, r in enumerate(rows)]
            return schemas.ClassifyResponse(id=f"classify-{request_id(request)}", created=int(time.time()),
                                            model=model.name, data=data,
                                            usage=schemas.Usage(prompt_tokens=result.tokens,
                                                                total_tokens=result.tokens))
        return await self._run(request, work, schemas.ClassifyRequest)


__all__ = ["Ingress", "ModelFailure", "ScoringService", "app"]
