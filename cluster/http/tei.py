"""Text Embeddings Inference's classification API: POST /predict, for TEI clients.

As TEI serves a sequence-classification model (huggingface/text-embeddings-inference@265deb2a,
router/src/http/types.rs `PredictRequest` / `PredictInput` / `Prediction`; core/src/infer.rs
`predict`; router/src/lib.rs `ErrorType`):
- `inputs`: a string, a pair `[a, b]` (one input: for a reward model, a question and its answer,
  scored as the (user, assistant) conversation, or the encoder cards' text pair), or a batch
  `[[a], [q, d], ...]`; a flat list of two strings is one pair, as in TEI.
- `raw_scores: false` (TEI's default) applies sigmoid to a one-label model and softmax over
  several; `true` gives the raw value (a reward model's reward: send this).
- `truncate` (default false: over-length input is refused with 413, as TEI without
  --auto-truncate) and `truncation_direction` (`Right`, TEI's default, keeps the start; `Left`
  keeps the end, the response: what a reward model should use).
- The answer: per input, every label's `{score, label}`, highest first; a batch, one list each.
- Errors: `{"error": "...", "error_type": "Validation" | "Overloaded" | "Backend" | ...}` with
  TEI's statuses (413 validation, 429 overloaded, 424 backend).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StrictBool, field_validator

from cluster.core.errors import InvalidInput
from cluster.core.inputs import EncodeOptions
from cluster.core.service import ScoringService
from cluster.http.common import classify_activation, label_values
from cluster.http.schemas import COUNTED, Lenient, ModelName, Text, checked

# our error code -> (TEI's status, TEI's error_type)
TEI_ERRORS = {
    "input_too_long": (413, "Validation"),
    "request_too_large": (413, "Validation"),
    "invalid_input": (422, "Validation"),
    "invalid_config": (422, "Validation"),
    "unknown_model": (404, "Validation"),
    "not_found": (404, "Validation"),
    "method_not_allowed": (405, "Validation"),
    "unauthorized": (401, "Unauthorized"),
    "overloaded": (429, "Overloaded"),
    "model_failure": (424, "Backend"),
    "model_load_error": (424, "Backend"),
}


class TEIErrorResponse(BaseModel):
    """TEI's ErrorResponse: the message and its kind."""

    error: str
    error_type: Literal["Validation", "Unauthorized", "Overloaded", "Backend"]


def ERROR_STYLE(f) -> tuple[int, dict]:  # noqa: N802 - the protocol modules' hook (cluster/http/__init__.py)
    status, kind = TEI_ERRORS.get(f.code, (f.status, "Backend"))
    return status, TEIErrorResponse(error=f.message, error_type=kind).model_dump()


ERROR_MODEL = TEIErrorResponse  # the error body /openapi.json documents for this route


# one input: a text, or [text] / [question, answer] (the encoder cards' text pair), no text empty
Input = Annotated[list[Text], checked(minItems=1, maxItems=2)]


class PredictRequest(Lenient):
    inputs: Text | Input | Annotated[list[Input], checked(minItems=1, **COUNTED)]
    truncate: StrictBool | None = None
    truncation_direction: Literal["Left", "Right", "left", "right"] = "Right"
    raw_scores: StrictBool = False
    model: ModelName | None = None  # not TEI's (one model per server); names one of ours if given

    @field_validator("inputs")
    @classmethod
    def _shape(cls, inputs):
        if isinstance(inputs, list):
            if not inputs:
                raise InvalidInput("inputs: empty")
            if isinstance(inputs[0], str) and len(inputs) > 2:
                raise InvalidInput(
                    f"inputs: a flat list is one input, a string or a pair [string, string]; got "
                    f"{len(inputs)} strings (a batch is [[string], [string, string], ...])"
                )
            for i, item in enumerate(inputs):
                if isinstance(item, list) and not 1 <= len(item) <= 2:
                    raise InvalidInput(
                        f"inputs[{i}]: each input is [string] or a pair [string, string], got {len(item)} strings"
                    )
        return inputs

    def items(self) -> tuple[list[list[str]], bool]:
        """(each input as 1 or 2 strings, whether the request is a batch)"""
        if isinstance(self.inputs, str):
            return [[self.inputs]], False
        if isinstance(self.inputs[0], str):
            return [list(self.inputs)], False
        return [list(i) for i in self.inputs], True

    def options(self) -> EncodeOptions:
        if not self.truncate:
            return EncodeOptions(truncate="error")
        # TEI's direction is the side cut: Left keeps the end (ours "left"), Right keeps the start
        return EncodeOptions(truncate=self.truncation_direction.lower())


class Prediction(BaseModel):
    score: float
    label: str


def scored(item: list[str]) -> str | list[dict[str, str]]:
    """One TEI input as one of ours: a text, or a pair as the (question, answer) conversation."""
    if len(item) == 1:
        return item[0]
    if not item[0] or not item[1]:
        raise InvalidInput("inputs: a pair's texts must not be empty")
    return [{"role": "user", "content": item[0]}, {"role": "assistant", "content": item[1]}]


def router(service: ScoringService) -> APIRouter:
    r = APIRouter()

    @r.post("/predict", response_model=list[Prediction] | list[list[Prediction]])
    async def predict(body: PredictRequest) -> JSONResponse:
        model = service.resolve(body.model, ("reward",))
        items, batch = body.items()
        _, rows, head = await label_values(service, model, [scored(i) for i in items], "inputs", body.options())
        if not body.raw_scores:
            rows = [classify_activation(row, None) for row in rows]  # TEI: softmax or sigmoid, whatever the head
        answers = [
            sorted(
                ({"score": v, "label": head["labels"][k]} for k, v in enumerate(row)),
                key=lambda p: p["score"],
                reverse=True,
            )
            for row in rows
        ]
        return JSONResponse(answers if batch else answers[0])

    return r
