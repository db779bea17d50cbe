"""SGLang's routes for reward models: native POST /classify (`text` / `input_ids` in, `embedding`
out; served by the /classify route in vllm.py, which tells the two by their fields), and the
OpenAI-style POST /v1/embeddings (what verl's SGLang reward path reads) and /v1/classify.

As SGLang serves a reward model started with --is-embedding (sgl-project/sglang:
python/sglang/srt/entrypoints/http_server.py @0025436e `classify_request`;
python/sglang/srt/managers/io_struct.py @001067ff `EmbeddingReqInput`;
python/sglang/srt/entrypoints/openai/serving_embedding.py @bf5ceddc, serving_classify.py @984762a0,
protocol.py @004c82e0 `EmbeddingRequest`, `ClassifyRequest`, `ErrorResponse`):
- `embedding` is the score head's raw output at the last token: [reward] for a reward model
  (shaped where the model has `shaping`), every label's value for a multi-output one;
- native /classify answers one object for one input (`text` a string, `input_ids` a flat list)
  and a list for a list; errors are 400 `{"error": {"message"}}` (the vLLM style's subset);
- /v1/classify applies softmax over the labels, as SGLang does (a one-label model: probs [1.0];
  read a reward from /classify or /v1/embeddings instead);
- over-length input is refused with 400, as SGLang without --allow-auto-truncate.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, WithJsonSchema, model_validator

from cluster.core.errors import InvalidInput
from cluster.core.inputs import EncodeOptions, check_text, shown
from cluster.core.results import label_probabilities
from cluster.core.service import ScoringService
from cluster.http.app import request_id
from cluster.http.common import (
    causal_lm,
    classify_activation,
    label_values,
    query_item_prompts,
    status_style,
    top_label,
)
from cluster.http.schemas import ABSENT, COUNTED, Lenient, ModelName, Text, TokenIds, Usage, checked, usage

REFUSE_OVER_LENGTH = EncodeOptions(truncate="error")
ERROR_TYPES = {
    400: "BadRequestError",
    401: "Unauthorized",
    404: "NotFoundError",
    413: "RequestTooLarge",
    503: "ServiceUnavailableError",
}


class SGLangErrorResponse(BaseModel):
    """SGLang's OpenAI-style ErrorResponse: {"object": "error", message, type, param, code}."""

    object: Literal["error"] = "error"
    message: str
    type: str  # ERROR_TYPES' name of the status
    param: str | None  # the field at fault, where one is: model
    code: int  # the HTTP status
    request_id: str  # ours: what to quote to the operator


def _flat_body(f, status: int) -> dict:
    return SGLangErrorResponse(
        message=f.message,
        type=ERROR_TYPES.get(status, "InternalServerError"),
        param="model" if f.code == "unknown_model" else None,
        code=status,
        request_id=f.request_id,
    ).model_dump()


ERROR_STYLE = status_style({422: 400}, _flat_body)
ERROR_MODEL = SGLangErrorResponse  # the error body /openapi.json documents for these routes
DEFAULT_MODEL_NAME = "default"  # SGLang's: a request that names no model


def model_name(name: str | None) -> str | None:
    return None if name in (None, DEFAULT_MODEL_NAME) else name


class EmbeddingRequest(Lenient):
    input: (
        Text
        | Annotated[list[Text], checked(minItems=1, **COUNTED)]
        | TokenIds
        | Annotated[list[TokenIds], checked(minItems=1, **COUNTED)]
    )
    model: ModelName | None = None  # "default": the first reward model, as a request that names none
    encoding_format: Annotated[str, checked(enum=["float"])] = "float"
    dimensions: Annotated[int | None, WithJsonSchema(ABSENT)] = None  # not for a reward model
    user: str | None = None

    @model_validator(mode="after")
    def _check(self) -> EmbeddingRequest:
        if self.input == "" or self.input == []:
            raise ValueError("Input cannot be empty")
        if self.encoding_format != "float":
            raise ValueError(f"encoding_format {shown(self.encoding_format)} is not supported; use float")
        if self.dimensions is not None:
            raise ValueError("dimensions is not supported for a reward model")
        return self

    def items(self) -> list:
        if isinstance(self.input, str) or isinstance(self.input[0], int):
            return [self.input]
        return list(self.input)


class MetaInfo(BaseModel):
    id: str  # the request's rid for this input, or a fresh one
    finish_reason: None = None
    prompt_tokens: int


class NativeClassification(BaseModel):
    """SGLang's native /classify answer for one input: the score head's raw output."""

    embedding: list[float]
    meta_info: MetaInfo


async def native_classify(service: ScoringService, text: Any, input_ids: Any, name: str | None, rid: Any) -> Any:
    """SGLang's native /classify: {"embedding", "meta_info"} per input; one object for one input."""
    if (text is None) == (input_ids is None):
        raise InvalidInput(
            "give one of text or input_ids"
            if text is None
            else "text and input_ids cannot be provided at the same time"
        )
    given = text if text is not None else input_ids
    single = isinstance(given, str) or (isinstance(given, list) and given and not isinstance(given[0], list | str))
    items = [given] if single else list(given)
    if not items:
        raise InvalidInput("At least one of text, input_ids, or image should be provided")
    items = [
        [{"role": "user", "content": i[0]}, {"role": "assistant", "content": i[1]}]
        if isinstance(i, list) and len(i) == 2 and all(isinstance(s, str) for s in i)
        else i
        for i in items
    ]
    ids = [rid] if isinstance(rid, str) else rid
    if ids is not None and len(ids) != len(items):
        raise InvalidInput(f"rid: {len(ids)} request id(s) for {len(items)} input(s); give one per input")
    for i, one in enumerate(ids or ()):  # answered back in meta_info.id: text the answer can carry
        check_text(one, "rid" if isinstance(rid, str) else f"rid[{i}]")
    model = service.resolve(model_name(name), ("reward",))
    result, rows, _ = await label_values(
        service, model, items, "text" if text is not None else "input_ids", REFUSE_OVER_LENGTH
    )
    out = [
        NativeClassification(
            embedding=row, meta_info=MetaInfo(id=ids[i] if ids else uuid.uuid4().hex, prompt_tokens=n)
        ).model_dump()
        for i, (row, n) in enumerate(zip(rows, result.num_tokens))
    ]
    return out[0] if single else out


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float]  # a reward model's [reward]; every label's value for a multi-output one
    index: int


class EmbeddingResponse(BaseModel):
    data: list[Embedding]
    model: str
    object: Literal["list"] = "list"
    usage: Usage


class SGLangClassification(BaseModel):
    index: int
    label: str
    probs: list[float]
    num_classes: int


class SGLangClassifyUsage(Usage):
    prompt_tokens_details: None = None


class SGLangClassifyResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[SGLangClassification]
    usage: SGLangClassifyUsage


class ScoringResponse(BaseModel):
    """SGLang's decoder-only scoring answer (protocol.py @9b116dff `ScoringResponse`): per item,
    each label token's probability, in label_token_ids' order."""

    scores: list[list[float]]
    model: str
    usage: Usage | None = None
    object: Literal["scoring"] = "scoring"


async def decoder_scores(
    service: ScoringService,
    name: str | None,
    query: str | list[int],
    items: str | list,
    label_token_ids: list[int],
    apply_softmax: bool,
    item_first: bool,
) -> ScoringResponse:
    """SGLang's /v1/score with label_token_ids (sgl-project/sglang serving_score.py @083d6013;
    tokenizer_manager `score_request`): a text query and text items are joined as texts
    (`f"{query}{item}"`, or item first) and tokenized as the tokenizer does by default; token ids
    are joined as given; one of each is refused, in SGLang's words. Each item's scores are the
    label tokens' probabilities at the next token: over the whole vocabulary, or a softmax over
    just them with `apply_softmax`."""
    model = causal_lm(service, model_name(name), "/v1/score")
    items = [items] if isinstance(items, str) else list(items)
    if items and (isinstance(query, str) != isinstance(items[0], str)):
        raise InvalidInput("Invalid combination of query/items types for score_request.")
    prompts = query_item_prompts(query, items, item_first=item_first, add_special_tokens=True, join_texts=True)
    result = await service.submit(service.next_token_job(model, prompts, label_token_ids))
    return ScoringResponse(
        scores=[label_probabilities(row, apply_softmax) for row in result.logprobs],
        model=model.name,
        usage=usage(result.tokens),
    )


def router(service: ScoringService) -> APIRouter:
    r = APIRouter()

    @r.post("/v1/embeddings", response_model=EmbeddingResponse)
    async def embeddings(body: EmbeddingRequest) -> JSONResponse:
        """A reward model's `embedding` is [reward] (verl's SGLang path reads data[-1].embedding[-1])."""
        model = service.resolve(model_name(body.model), ("reward",))
        result, rows, _ = await label_values(service, model, body.items(), "input", REFUSE_OVER_LENGTH)
        data = [Embedding(embedding=row, index=i) for i, row in enumerate(rows)]
        return JSONResponse(EmbeddingResponse(data=data, model=model.name, usage=usage(result.tokens)).model_dump())

    @r.post("/v1/classify", response_model=SGLangClassifyResponse)
    async def classify(body: EmbeddingRequest, request: Request) -> JSONResponse:
        """SGLang's OpenAI-style classify: softmax over the labels."""
        model = service.resolve(model_name(body.model), ("reward",))
        result, rows, head = await label_values(service, model, body.items(), "input", REFUSE_OVER_LENGTH)
        data = []
        for i, row in enumerate(rows):
            probs = classify_activation(row, None) if len(row) > 1 else [1.0]  # SGLang: softmax, whatever the head
            data.append(
                SGLangClassification(index=i, label=top_label(row, head["labels"]), probs=probs, num_classes=len(probs))
            )
        answer = SGLangClassifyResponse(
            id=f"classify-{request_id(request)}",
            created=int(time.time()),
            model=model.name,
            data=data,
            usage=SGLangClassifyUsage(**usage(result.tokens).model_dump()),
        )
        return JSONResponse(answer.model_dump())

    return r
