"""OpenAI chat completions: POST /v1/chat/completions, for every causal-LM model served (critics,
pointwise judges, generative judges): how RL frameworks reach an LLM judge (verl's GenRM reward function, ROLL,
SkyRL, AReaL, NeMo Gym through the `openai` client). Replayed with the `openai` package itself in
tests/http/test_client_openai.py.

The request as the `openai` client sends it (openai-python `resources/chat/completions`):
`messages` with any role the model's chat template accepts, `max_tokens` or
`max_completion_tokens`, `temperature`, `top_p`, `n`, `stop`, `logprobs`, `top_logprobs`,
`stream` with `stream_options.include_usage`, `seed`, and vLLM's `chat_template_kwargs`; fields
the protocol has and we do not use are ignored, as vLLM does. Errors in OpenAI's shape (vLLM's,
cluster/http/vllm.py), which the client raises as its typed errors.

`temperature` 0 or absent is greedy (a judge's verdicts reproducible unless the client asks for
sampling); above 0 it samples with `top_p`, reproducibly when the request gives a `seed`
(cluster/engine/generation.py). `logprobs` and `top_logprobs` are the model's own distribution
(before temperature and top-p, as vLLM's raw logprobs). A stream sends the answer as OpenAI's
chunks once it is complete (the generation is continuously batched on the model's side; tokens
are not yet streamed as they are decoded).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat

from cluster.core.chat import ChatJob, ChatResult
from cluster.core.errors import InvalidInput
from cluster.core.service import ScoringService
from cluster.http.common import CAUSAL_KINDS
from cluster.http.schemas import JSONInt, checked
from cluster.http.vllm import ERROR_MODEL, ERROR_STYLE  # noqa: F401 - this module's error style: OpenAI's

MAX_TOKENS = 2**31 - 1  # a bound on the field itself (a model's own limit is its max_length)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool fields...: handed to the chat template as sent

    role: str = Field(min_length=1, max_length=64)
    content: str | list[TextPart] | None = None


StopText = Annotated[str, Field(min_length=1)]


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    # the protocol's other fields (user, metadata, ...) ignored; typed as the protocol types them (a bool is no int)
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: Annotated[JSONInt, Field(ge=1, le=MAX_TOKENS), checked(minimum=1, maximum=MAX_TOKENS)] | None = None
    max_completion_tokens: (
        Annotated[JSONInt, Field(ge=1, le=MAX_TOKENS), checked(minimum=1, maximum=MAX_TOKENS)] | None
    ) = None
    temperature: StrictFloat | None = Field(None, ge=0, le=2)  # 0 or absent: greedy
    top_p: StrictFloat | None = Field(None, gt=0, le=1)
    n: JSONInt = Field(1, ge=1, le=16)
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[JSONInt, Field(ge=0, le=20), checked(minimum=0, maximum=20)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    seed: JSONInt | None = None  # any integer: its value modulo 2**64 seeds the sampling
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM's: each logprobs token as "token_id:<id>" (text cannot tell byte pieces apart)
    return_tokens_as_token_ids: StrictBool = False


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[dict[str, Any]]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: str = "assistant"
    content: str


class CompletionChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str = Field(description="stop: an end token or a stop string; length: max_tokens reached")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """OpenAI's chat.completion (with `stream`: the same answer as text/event-stream chunks)."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


def _text(content: str | list[TextPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text for part in content)


def chat_job(body: ChatRequest) -> ChatJob:
    if body.top_logprobs and not body.logprobs:
        raise InvalidInput("top_logprobs: logprobs must be true when top_logprobs is used")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    messages = [{**m.model_dump(exclude_none=True), "content": _text(m.content)} for m in body.messages]
    return ChatJob(
        messages=messages,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        n=body.n,
        stop=tuple(stops),
        logprobs=body.logprobs,
        template_kwargs=dict(body.chat_template_kwargs or {}),
        temperature=float(body.temperature or 0.0),
        top_p=float(body.top_p if body.top_p is not None else 1.0),
        seed=None if body.seed is None else body.seed % 2**64,  # a torch generator's seed: 64 bits
        top_logprobs=body.top_logprobs or 0,
    )


def _entry(text: str, logprob: float, token_id: int, as_ids: bool) -> dict:
    token = f"token_id:{token_id}" if as_ids else text
    return {"token": token, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _token_logprob(choice, k: int, as_ids: bool) -> dict:
    top = choice.top[k] if choice.top else ()
    return {
        **_entry(choice.tokens[k], choice.logprobs[k], choice.token_ids[k], as_ids),
        "top_logprobs": [_entry(t, lp, i, as_ids) for t, lp, i in top],
    }


def _logprobs(choice, as_ids: bool) -> dict | None:
    if choice.logprobs is None:
        return None
    return {"content": [_token_logprob(choice, k, as_ids) for k in range(len(choice.tokens))]}


def _usage(result: ChatResult) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def completion(result: ChatResult, model: str, as_ids: bool = False) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": _logprobs(c, as_ids),
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(result.choices)
        ],
        "usage": _usage(result),
    }


def chunks(result: ChatResult, model: str, include_usage: bool, as_ids: bool = False):
    """The answer as OpenAI's stream: per choice a role delta, its tokens' deltas, a finish
    chunk; a usage chunk (no choices) when asked; then [DONE]."""
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def event(choices: list, **extra) -> str:
        return f"data: {json.dumps({**head, 'choices': choices, **extra})}\n\n"

    for i, c in enumerate(result.choices):
        role = {"role": "assistant", "content": ""}
        yield event([{"index": i, "delta": role, "logprobs": None, "finish_reason": None}])
        for k, piece in enumerate(c.pieces):
            lp = None
            if c.logprobs is not None:
                lp = {"content": [_token_logprob(c, k, as_ids)]}
            yield event([{"index": i, "delta": {"content": piece}, "logprobs": lp, "finish_reason": None}])
        yield event([{"index": i, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}])
    if include_usage:
        yield event([], usage=_usage(result))
    yield "data: [DONE]\n\n"


def router(service: ScoringService) -> APIRouter:
    r = APIRouter()

    chunks_doc = "with stream: OpenAI's chat.completion.chunk events, then [DONE]"
    stream = {"text/event-stream": {"schema": {"description": chunks_doc}}}

    @r.post("/v1/chat/completions", response_model=ChatCompletion, responses={200: {"content": stream}})
    async def chat_completions(body: ChatRequest):
        model = service.resolve(body.model, CAUSAL_KINDS)
        result = await service.chat(model, chat_job(body))
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                chunks(result, model.name, usage, body.return_tokens_as_token_ids), media_type="text/event-stream"
            )
        return JSONResponse(completion(result, model.name, body.return_tokens_as_token_ids))

    return r
