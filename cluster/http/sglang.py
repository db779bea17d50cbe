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
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import model_validator

from cluster.core.errors import InvalidInput
from cluster.core.inputs import EncodeOptions, check_text, shown
from cluster.core.service import ScoringService
from cluster.http.app import request_id
from cluster.http.common import classify_activation, label_values, status_style, top_label
from cluster.http.schemas import Lenient, ModelName, usage

REFUSE_OVER_LENGTH = EncodeOptions(truncate="error")
ERROR_TYPES = {
    400: "BadRequestError",
    401: "Unauthorized",
    404: "NotFoundError",
    413: "RequestTooLarge",
    503: "ServiceUnavailableError",
}


def _flat_body(f, status: int) -> dict:
    """SGLang's OpenAI-style ErrorResponse: {"object": "error", message, type, param, code}."""
    return {
        "object": "error",
        "message": f.message,
        "type": ERROR_TYPES.get(status, "InternalServerError"),
        "param": "model" if f.code == "unknown_model" else None,
        "code": status,
        "request_id": f.request_id,
    }


ERROR_STYLE = status_style({422: 400}, _flat_body)
DEFAULT_MODEL_NAME = "default"  # SGLang's: a request that names no model


def model_name(name: str | None) -> str | None:
    return None if name in (None, DEFAULT_MODEL_NAME) else name


class EmbeddingRequest(Lenient):
    input: str | list[str] | list[int] | list[list[int]]
    model: ModelName | None = None
    encoding_format: str = "float"
    dimensions: int | None = None
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
        {
            "embedding": row,
            "meta_info": {"id": ids[i] if ids else uuid.uuid4().hex, "finish_reason": None, "prompt_tokens": n},
        }
        for i, (row, n) in enumerate(zip(rows, result.num_tokens))
    ]
    return out[0] if single else out


def router(service: ScoringService) -> APIRouter:
    r = APIRouter()

    @r.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> JSONResponse:
        """A reward model's `embedding` is [reward] (verl's SGLang path reads data[-1].embedding[-1])."""
        model = service.resolve(model_name(body.model), ("reward",))
        result, rows, _ = await label_values(service, model, body.items(), "input", REFUSE_OVER_LENGTH)
        data = [{"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(rows)]
        return JSONResponse(
            {"data": data, "model": model.name, "object": "list", "usage": usage(result.tokens).model_dump()}
        )

    @r.post("/v1/classify")
    async def classify(body: EmbeddingRequest, request: Request) -> JSONResponse:
        """SGLang's OpenAI-style classify: softmax over the labels."""
        model = service.resolve(model_name(body.model), ("reward",))
        result, rows, head = await label_values(service, model, body.items(), "input", REFUSE_OVER_LENGTH)
        data = []
        for i, row in enumerate(rows):
            probs = classify_activation(row, None) if len(row) > 1 else [1.0]  # SGLang: softmax, whatever the head
            data.append(
                {"index": i, "label": top_label(row, head["labels"]), "probs": probs, "num_classes": len(probs)}
            )
        return JSONResponse(
            {
                "id": f"classify-{request_id(request)}",
                "object": "list",
                "created": int(time.time()),
                "model": model.name,
                "data": data,
                "usage": {**usage(result.tokens).model_dump(), "prompt_tokens_details": None},
            }
        )

    return r
