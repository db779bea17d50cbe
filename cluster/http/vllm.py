"""vLLM's pooling API, for what a reward model answers: /classify, /pooling, /score (+ /v1/score),
/rerank (+ /v1, /v2), /tokenize, /health, /version (and /v1/models, in ours.py, in the OpenAI shape).

Request fields, answers, statuses and the error body follow vLLM's server (vllm-project/vllm:
vllm/entrypoints/pooling/{classify,pooling,score}/protocol.py @dff4cad3 / @343bacaf / @1fff4ef8,
vllm/entrypoints/openai/protocol.py @ec3b890c `ErrorResponse`, api_server.py @048027fb); the
conformance tests replay vLLM's example clients (tests/clients/test_vllm.py). What differs, on
purpose:
- token ids: the reward model card's (a doubled BOS collapsed, never one added), unless the client
  sets `add_special_tokens` itself;
- `/pooling` answers a reward model's sequence values (`task: classify`, or no task: raw values, as
  vLLM's reward runner gave them); per-token output (`token_classify`) is served for a process
  reward model only, as vLLM's STEP pooler answers it (one row per step tag, see `step_pooling`),
  never a reward model's every token;
- a one-label model's value is its shaped reward where the model has `shaping`.
"""

from __future__ import annotations

import struct
import time
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, WithJsonSchema, field_validator, model_validator

from cluster.core.config import Ensemble
from cluster.core.errors import InvalidInput, ScoringError, UnknownModel
from cluster.core.inputs import EncodeOptions, check_text, shown, unpack_segments
from cluster.core.results import label_probabilities
from cluster.core.service import ScoringService, TokenizeJob
from cluster.core.version import __version__
from cluster.http import sglang
from cluster.http.app import request_id
from cluster.http.common import (
    causal_lm,
    classify_activation,
    label_values,
    query_item_prompts,
    status_style,
    top_label,
)
from cluster.http.schemas import (
    ABSENT,
    COUNTED,
    JSONInt,
    Lenient,
    ModelName,
    Text,
    TokenIds,
    Usage,
    checked,
    one_of_forms,
    usage,
)
from cluster.kinds import kind_of

ERROR_TYPES = {
    400: "BadRequestError",
    401: "Unauthorized",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    413: "RequestTooLarge",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class VLLMErrorInfo(BaseModel):
    message: str
    type: str  # ERROR_TYPES' name of the status
    param: str | None  # the field at fault, where one is: model, input
    code: int  # the HTTP status
    request_id: str  # ours: what to quote to the operator


class VLLMErrorResponse(BaseModel):
    """vLLM's ErrorResponse since v0.10.1: {"error": {message, type, param, code}} (code = the status)."""

    error: VLLMErrorInfo


def _vllm_body(f, status: int) -> dict:
    param = "model" if f.code == "unknown_model" else ("input" if f.code == "input_too_long" else None)
    info = VLLMErrorInfo(
        message=f.message,
        type=ERROR_TYPES.get(status, "BadRequestError"),
        param=param,
        code=status,
        request_id=f.request_id,
    )
    return VLLMErrorResponse(error=info).model_dump()


# vLLM answers invalid input (and over-length input) with 400, never 422
ERROR_STYLE = status_style({422: 400}, _vllm_body)
ERROR_MODEL = VLLMErrorResponse  # the error body /openapi.json documents for these routes


# ---------------------------------------------------------------- requests


# what as_message reads of a content part: a text part, {"type": "text", "text": "..."}
TEXT_PART = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
}


class ChatMessage(Lenient):
    """An OpenAI chat message as vLLM takes it: any role, content a string or text parts, `name`."""

    role: str = Field(min_length=1)
    content: str | Annotated[list[dict[str, Any]], WithJsonSchema({"type": "array", "items": TEXT_PART})] | None = None
    name: str | None = None

    def as_message(self, where: str) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):  # vLLM's "string" content format: text parts joined by newlines
            texts = []
            for k, part in enumerate(content):
                if part.get("type") != "text":
                    raise InvalidInput(
                        f"{where}.content[{k}]: only text parts can be scored, got type {shown(part.get('type'))}"
                    )
                if not isinstance(part.get("text"), str):
                    raise InvalidInput(
                        f"{where}.content[{k}].text: a text part's text must be a string, got "
                        f"{type(part.get('text')).__name__}"
                    )
                texts.append(part["text"])
            content = "\n".join(texts)
        return {"role": self.role, "content": content or ""}


TRUNCATE_PROMPT_TOKENS = {
    "type": "integer",
    "anyOf": [{"const": -1}, {"minimum": 1}],
    "description": "Cut an input to its last N tokens (and a leading BOS), N at most the model's max_length; "
    "-1: the model's max_length. Absent: an input over max_length is refused.",
}


# use_activation and its deprecated spellings (vLLM <= 0.14: activation; softmax; normalize), vLLM's precedence last
ACTIVATION_FLAGS = ("use_activation", "activation", "softmax", "normalize")
STEP_TASKS = ("token_classify", "encode")  # vLLM's task for a prm's STEP pooler ("encode" before v0.11)


class PoolingParams(Lenient):
    """What vLLM's pooling requests share (PoolingBasicRequestMixin, ClassifyRequestMixin)."""

    model: ModelName | None = None
    # the last tokens kept (and a leading BOS); -1: the model's max_length
    truncate_prompt_tokens: Annotated[JSONInt, Field(ge=-1), WithJsonSchema(TRUNCATE_PROMPT_TOKENS)] | None = None
    use_activation: StrictBool | None = None
    activation: StrictBool | None = None  # older spellings of use_activation (vLLM <= 0.14)
    softmax: StrictBool | None = None
    normalize: StrictBool | None = None
    add_special_tokens: StrictBool | None = None  # None: the card's ids

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _cut(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("must be -1 (the model's max_length) or at least 1, got 0")
        return value

    @model_validator(mode="after")
    def _one_activation(self) -> PoolingParams:
        """`activation`, `softmax` and `normalize` are vLLM's deprecated spellings of
        `use_activation` (verl's reward loop still sends `activation`): the same switch, so two of
        them that disagree are refused rather than one silently winning by vLLM's precedence."""
        given = {f: getattr(self, f) for f in ACTIVATION_FLAGS if getattr(self, f) is not None}
        if len(set(given.values())) > 1:
            said = ", ".join(f"{f}: {str(v).lower()}" for f, v in given.items())
            raise ValueError(
                f"{said} disagree: activation, softmax and normalize are older names of use_activation; give one"
            )
        return self

    def activation_on(self, default: bool = True) -> bool:
        for flag in (self.normalize, self.softmax, self.activation, self.use_activation):  # vLLM's precedence
            if flag is not None:
                return flag
        return default

    def options(self, any_role: bool = False) -> EncodeOptions:
        """Over-length input is refused (vLLM's 400) unless truncate_prompt_tokens asks for a cut,
        which keeps the last tokens (and a leading BOS); -1 means the model's max_length."""
        if self.truncate_prompt_tokens is None:
            return EncodeOptions(truncate="error", add_special_tokens=self.add_special_tokens, any_role=any_role)
        limit = None if self.truncate_prompt_tokens == -1 else self.truncate_prompt_tokens
        return EncodeOptions(
            truncate=limit if limit is not None else "left",
            add_special_tokens=self.add_special_tokens,
            any_role=any_role,
        )


# vLLM's `input`: a text, texts, one input's token ids, or several inputs' token ids (none empty)
VLLMInput = (
    Text
    | Annotated[list[Text], checked(minItems=1, **COUNTED)]
    | TokenIds
    | Annotated[list[TokenIds], checked(minItems=1, **COUNTED)]
)
ChatConversation = Annotated[list[ChatMessage], checked(minItems=1)]  # one, of any roles (the chat template's)
VLLM_FORMS = (
    ({"input": ["string", "array"]}, ["messages", "text", "input_ids"]),
    ({"messages": "array"}, ["input", "text", "input_ids"]),
)
# SGLang's native /classify: a text, texts, [question, answer] pairs, or token ids
SGLANG_FORMS = (
    ({"text": ["string", "array"]}, ["input_ids", "input", "messages"]),
    ({"input_ids": "array"}, ["text", "input", "messages"]),
)


class InputRequest(PoolingParams):
    """The completion form (`input`) or the chat form (`messages`, one conversation)."""

    model_config = {"json_schema_extra": one_of_forms(*VLLM_FORMS)}

    input: VLLMInput | None = None
    messages: ChatConversation | None = None

    @property
    def sglang(self) -> bool:
        """SGLang's native form (ClassifyRequest), which `input` and `messages` do not apply to."""
        return False

    @model_validator(mode="after")
    def _one_form(self) -> InputRequest:
        if self.sglang:
            return self
        if (self.input is None) == (self.messages is None):
            raise ValueError("give exactly one of input or messages")
        if self.input == "" or self.input == []:
            raise ValueError("input is empty")
        return self

    def items(self) -> tuple[list, str]:
        if self.messages is not None:
            return [[m.as_message(f"messages[{i}]") for i, m in enumerate(self.messages)]], "messages"
        if isinstance(self.input, str) or (self.input and isinstance(self.input[0], int)):
            return [self.input], "input"
        return list(self.input), "input"

    def options(self, any_role: bool | None = None) -> EncodeOptions:
        """A chat-form request's messages may have any role, as vLLM's chat template decides."""
        return super().options(any_role=self.messages is not None if any_role is None else any_role)


class ClassifyRequest(InputRequest):
    """/classify: vLLM's completion (`input`) or chat (`messages`) form, or SGLang's native form
    (`text` or `input_ids`, see sglang.py; a request id per input in `rid`)."""

    model_config = {"json_schema_extra": one_of_forms(*VLLM_FORMS, *SGLANG_FORMS)}

    text: (
        Text
        | Annotated[list[Text], checked(minItems=1, **COUNTED)]
        | Annotated[list[Annotated[list[str], checked(minItems=2, maxItems=2)]], checked(minItems=1, **COUNTED)]
        | None
    ) = None
    input_ids: TokenIds | Annotated[list[TokenIds], checked(minItems=1, **COUNTED)] | None = None
    rid: str | list[str] | None = Field(None, description="SGLang's request ids: one per input.")

    @property
    def sglang(self) -> bool:
        return self.text is not None or self.input_ids is not None

    @model_validator(mode="after")
    def _not_mixed(self) -> ClassifyRequest:
        if self.sglang and (self.input is not None or self.messages is not None):
            raise ValueError("give SGLang's text or input_ids, or vLLM's input or messages, not fields of both forms")
        return self


def _not_sglang(value: Any) -> Any:
    if value is not None:
        raise ValueError("text / input_ids are SGLang's /classify fields; /pooling takes input or messages")
    return value


class PoolingRequest(InputRequest):
    """A reward model's sequence values (task classify, or none: raw values), or a process reward
    model's per-step rows (task token_classify, or vLLM's older name encode)."""

    # any other task refused in vLLM's words ("Task embed is not supported ...")
    task: Annotated[str, checked(enum=["classify", *STEP_TASKS])] | None = Field(
        None,
        description="token_classify (vLLM's older encode): a process reward model's per-step rows, where "
        "one is served.",
    )
    encoding_format: Literal["float"] = "float"
    text: Annotated[Any, WithJsonSchema(ABSENT)] = None  # SGLang's fields: /classify's, refused here
    input_ids: Annotated[Any, WithJsonSchema(ABSENT)] = None

    _sglang = field_validator("text", "input_ids")(_not_sglang)


ScoreInputs = str | Annotated[list[str], checked(minItems=1, **COUNTED)]
SCORE_FORMS = (("text_1", "text_2"), ("data_1", "data_2"), ("queries", "documents"), ("queries", "items"))


class ScoreRequest(PoolingParams):
    """/score: pairs (text_1[i], text_2[i]) in any of vLLM's spellings (the first given is read);
    1:1, 1:N or N:N. A reward model scores each pair as the conversation (user: text_1, assistant:
    text_2)."""

    model_config = {
        "json_schema_extra": {
            "anyOf": [
                {"required": list(form), "properties": dict.fromkeys(form, {"type": ["string", "array"]})}
                for form in SCORE_FORMS
            ]
        }
    }

    text_1: ScoreInputs | None = None
    text_2: ScoreInputs | None = None
    data_1: ScoreInputs | None = None
    data_2: ScoreInputs | None = None
    queries: ScoreInputs | None = None
    documents: ScoreInputs | None = None
    items: ScoreInputs | None = None

    def pairs(self) -> list[tuple[str, str]]:
        for name in dict.fromkeys(n for form in SCORE_FORMS for n in form):
            if getattr(self, name) == []:  # the pair read and any other: no field is an empty list
                raise InvalidInput(
                    "At least one text_pair element must be given"
                    if name in ("text_2", "data_2", "documents", "items")
                    else "At least one text element must be given"
                )
        forms = {
            ("text_1", "text_2"): (self.text_1, self.text_2),
            ("data_1", "data_2"): (self.data_1, self.data_2),
            ("queries", "documents"): (self.queries, self.documents),
            ("queries", "items"): (self.queries, self.items),
        }
        given = [(names, (a, b)) for names, (a, b) in forms.items() if a is not None and b is not None]
        if not given:
            raise InvalidInput("give text_1 and text_2 (or data_1/data_2, queries/documents, queries/items)")
        names, values = given[0]
        first, second = ([x] if isinstance(x, str) else list(x) for x in values)
        for name, value in zip(names, values):  # named as the client sent them, before they become pairs
            checked_texts(value, name)
        if len(first) > 1 and len(first) != len(second):
            raise InvalidInput("Input lengths must be either 1:1, 1:N or N:N")
        return list(zip(first * len(second) if len(first) == 1 else first, second))


def checked_texts(value: str | list[str], name: str) -> None:
    """Every text of a field can be tokenized (no lone surrogate), or the error names where."""
    for i, text in enumerate([value] if isinstance(value, str) else value):
        check_text(text, name if isinstance(value, str) else f"{name}[{i}]")


class RerankRequest(PoolingParams):
    query: str
    documents: list[str] = Field(json_schema_extra={"minItems": 1, **COUNTED})
    top_n: JSONInt = 0  # the best top_n, where 0 < top_n < len(documents); else all


class TokenizeRequest(Lenient):
    model_config = {
        "json_schema_extra": one_of_forms(({"prompt": "string"}, ["messages"]), ({"messages": "array"}, ["prompt"])),
    }

    model: ModelName | None = None
    prompt: Text | None = None
    messages: ChatConversation | None = None
    add_special_tokens: StrictBool | None = None
    return_token_strs: Annotated[StrictBool, checked(const=False)] | None = False  # token strings are not served

    @model_validator(mode="after")
    def _one_form(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


# a prompt's token ids as a client gives them (each below the vocabulary size)
Ids = list[Annotated[JSONInt, checked(minimum=0)]]
LabelTokenIds = Annotated[
    list[Annotated[JSONInt, checked(minimum=0)]],
    checked(minItems=1, description="Token ids read at the next token, each below the model's vocabulary size."),
]


class GenerativeScoringRequest(Lenient):
    """vLLM's POST /generative_scoring (vllm-project/vllm vllm/entrypoints/generate/generative_scoring/
    serving.py @5d089e01 `GenerativeScoringRequest`): each item's prompt is query + item (item +
    query with `item_first`), read at its next token by a causal LM."""

    model: ModelName | None = None
    query: str | Ids = Field(description="The query text or pre-tokenized query token IDs.")
    items: Annotated[list[str] | list[Ids], checked(minItems=1, **COUNTED)] = Field(
        description="List of item texts or pre-tokenized item token IDs."
    )
    label_token_ids: LabelTokenIds
    apply_softmax: StrictBool = Field(
        True,
        description="True: softmax over only the label_token_ids; false: each one's probability over the "
        "whole vocabulary.",
    )
    item_first: StrictBool = Field(False, description="True: item + query; false: query + item.")
    add_special_tokens: StrictBool = Field(
        True, description="Whether the query text is tokenized with the special tokens (items never are)."
    )
    priority: JSONInt = Field(0, description="Accepted and ignored (vLLM's scheduling priority).")
    request_id: str | None = Field(None, description="Accepted and ignored: the answer's id is the request's own.")


class V1ScoreRequest(ScoreRequest):
    """/v1/score: vLLM's score request (the fields of /score), or SGLang's decoder-only scoring
    (sgl-project/sglang python/sglang/srt/entrypoints/openai/protocol.py @9b116dff `ScoringRequest`),
    told apart by `label_token_ids`, which only SGLang's has: `query` + each of `items`, read at
    the next token by a causal LM (sglang.py `decoder_scores`)."""

    query: str | Ids | None = None
    items: ScoreInputs | Annotated[list[Ids], checked(minItems=1, **COUNTED)] | None = None
    label_token_ids: LabelTokenIds | None = None
    apply_softmax: StrictBool = False
    item_first: StrictBool = False


# ---------------------------------------------------------------- answers


class UsageInfo(Usage):
    prompt_tokens_details: Any = None


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassificationResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: UsageInfo


class PoolingData(BaseModel):
    index: int
    object: str = "pooling"
    data: list[float] | list[list[float]]  # a prm: one row per step tag


class PoolingResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[PoolingData]
    usage: UsageInfo


class ScoreData(BaseModel):
    index: int
    object: str = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: UsageInfo


class RerankResult(BaseModel):
    index: int
    document: dict[str, Any]
    relevance_score: float


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: dict[str, int]
    results: list[RerankResult]


class GenerativeScoringResponse(BaseModel):
    """vLLM's: each item's score is the probability of label_token_ids[0] at its next token."""

    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: UsageInfo


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


def _usage(tokens: int) -> UsageInfo:
    return UsageInfo(**usage(tokens).model_dump())


def _ok(body: BaseModel) -> JSONResponse:
    return JSONResponse(body.model_dump())


def _f32(x: float) -> float:
    """x as the float32 vLLM's pooler writes (its rows are float32 tensors' values)."""
    return struct.unpack("f", struct.pack("f", x))[0]


OTHER_KINDS = {
    "prm": "a process reward model: its step rewards are served by /pooling (task token_classify) and /v1/step_rewards",
    "pointwise": "a pointwise judge: its ratings are served by /v1/rate",
    "critic": "a critic: its verdicts are served by /v1/judge and /v1/compare",
}


def router(service: ScoringService) -> APIRouter:
    r = APIRouter()

    def reward_model(name: str | None, route: str):
        """The reward model (or ensemble) a request names; a model of another kind is refused with
        where its outputs are served."""
        try:
            return service.resolve(name, ("reward",))
        except InvalidInput:
            other = service.resolve(name, tuple(OTHER_KINDS))
            raise InvalidInput(
                f"model '{other.name}' is {OTHER_KINDS[other.kind]}; {route} answers a reward model's values"
            ) from None

    def named_prm(name: str | None):
        """The prm a step task's request names (or the first prm served), else None."""
        if name is None:
            return service.default_model("prm")
        try:
            return service.resolve(name, ("prm",))
        except ScoringError:
            return None

    def pooled_model(name: str | None):
        """A reward model first (as before prms were served), else a prm of that name."""
        try:
            return service.resolve(name, ("reward",))
        except (InvalidInput, UnknownModel) as err:
            prm = named_prm(name)
            if prm is None:
                raise err from None
            return prm

    async def step_pooling(model, body: PoolingRequest, request: Request) -> JSONResponse:
        """vLLM's STEP pooler (vllm-project/vllm@055e47c2 vllm/model_executor/layers/pooler/tokwise/methods.py
        `StepPool`, its head's softmax by default: activations.py @1c713679 `PoolerClassify`): one
        row per step tag, a two-label classifier's [P(label 0), P(label 1)] (Qwen2.5-Math-PRM:
        [P(negative), P(positive)]) or a causal LM's [P(good), P(bad)] (Math-Shepherd's
        `returned_token_ids`). The runner gives each step's reward p (the positive class's
        probability), so a row is [1 - p, p] or [p, 1 - p]: equal to vLLM's softmax to float
        rounding. Raw logits (`use_activation: false`) and heads of more than two labels are not
        served: refused, never answered with something else."""
        for flag in ("normalize", "softmax", "activation", "use_activation"):  # vLLM's precedence
            if getattr(body, flag) is not None:
                if not getattr(body, flag):
                    raise InvalidInput(
                        f"{flag}: false asks for raw logits; model '{model.name}' is a process reward "
                        "model served as its step probabilities (vLLM's default softmax rows), not "
                        f"its logits: leave {flag} out"
                    )
                break
        head = await service.head(model.name)
        if head["num_columns"] != 2:
            raise InvalidInput(
                f"model '{model.name}' is a process reward model with {head['num_columns']} labels; "
                "only its positive class's probability is served, so /pooling answers per-step rows "
                "for two-label prms only (use /v1/step_rewards)"
            )
        items, what = body.items()
        options = replace(body.options(), tagged=True)  # the client wrote the step tags: rendered as sent
        result = await service.submit(service.rewards_job(model, items, what, options))
        column = head["reward_column"]
        rows = [[[_f32(1.0 - p), p] if column == 1 else [p, _f32(1.0 - p)] for p in steps] for steps in result.steps]
        return _ok(
            PoolingResponse(
                id=f"pool-{request_id(request)}",
                created=int(time.time()),
                model=model.name,
                data=[PoolingData(index=i, data=row) for i, row in enumerate(rows)],
                usage=_usage(result.tokens),
            )
        )

    async def pair_scores(
        body: PoolingParams, pairs: list[tuple[str, str]], route: str
    ) -> tuple[Any, list[float], int]:
        model = reward_model(body.model, route)
        convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": d}] for q, d in pairs]
        result, rows, head = await label_values(service, model, convs, "pairs", body.options())
        if len(head["labels"]) > 1:
            raise InvalidInput(
                f"model '{model.name}' has {len(head['labels'])} outputs; the score API needs a "
                "one-output model (use /classify)"
            )
        # vLLM's score activation is the cross-encoder's: sigmoid on the one logit, whatever problem_type says
        values = [classify_activation(row, None) if body.activation_on() else row for row in rows]
        return model, [v[0] for v in values], result.tokens

    # vLLM's answer, or SGLang's native one (its form: one object for one input, a list for a list)
    classified = ClassificationResponse | sglang.NativeClassification | list[sglang.NativeClassification]

    @r.post("/classify", response_model=classified)
    @r.put("/classify", response_model=classified)  # SGLang's native /classify takes PUT too
    async def classify(body: ClassifyRequest, request: Request) -> JSONResponse:
        """Every label's value per input (`probs`), with vLLM's activation unless `use_activation: false`.
        SGLang's native form (`text` / `input_ids`) answers SGLang's `embedding` objects."""
        if body.sglang:
            return JSONResponse(await sglang.native_classify(service, body.text, body.input_ids, body.model, body.rid))
        model = reward_model(body.model, "/classify")
        items, what = body.items()
        result, rows, head = await label_values(service, model, items, what, body.options())
        if body.activation_on():
            rows = [classify_activation(row, head["problem_type"]) for row in rows]
        data = [
            ClassificationData(index=i, label=top_label(row, head["labels"]), probs=row, num_classes=len(row))
            for i, row in enumerate(rows)
        ]
        return _ok(
            ClassificationResponse(
                id=f"classify-{request_id(request)}",
                created=int(time.time()),
                model=model.name,
                data=data,
                usage=_usage(result.tokens),
            )
        )

    @r.post("/pooling", response_model=PoolingResponse)
    async def pooling(body: PoolingRequest, request: Request) -> JSONResponse:
        """A reward model's sequence values; a prm's per-step rows (vLLM's task token_classify)."""
        if body.task in STEP_TASKS:
            prm = named_prm(body.model)
            if prm is not None:
                return await step_pooling(prm, body, request)
        if body.task not in (None, "classify"):
            task = body.task if body.task.isprintable() and len(body.task) <= 80 else shown(body.task)  # vLLM's words
            if service.default_model("prm") is None:
                raise InvalidInput(
                    f"Task {task} is not supported: this server answers a sequence's values "
                    "(task classify); per-token output is not served"
                )
            raise InvalidInput(
                f"Task {task} is not supported: this server answers a reward model's sequence values "
                "(task classify) and a process reward model's per-step rows (task token_classify); "
                "a reward model's per-token output is not served"
            )
        model = pooled_model(body.model)
        if kind_of(model).steps:
            if body.task == "classify":
                raise InvalidInput(
                    f"Task classify is not supported by model '{model.name}': a process reward model "
                    "answers per-step rows (task token_classify)"
                )
            return await step_pooling(model, body, request)
        items, what = body.items()
        result, rows, head = await label_values(service, model, items, what, body.options())
        if body.activation_on(default=body.task == "classify"):
            rows = [classify_activation(row, head["problem_type"]) for row in rows]
        return _ok(
            PoolingResponse(
                id=f"pool-{request_id(request)}",
                created=int(time.time()),
                model=model.name,
                data=[PoolingData(index=i, data=row) for i, row in enumerate(rows)],
                usage=_usage(result.tokens),
            )
        )

    @r.post("/v1/score", response_model=ScoreResponse | sglang.ScoringResponse, include_in_schema=False)
    async def v1_score(body: V1ScoreRequest, request: Request) -> JSONResponse:
        """vLLM's /score; or, with `label_token_ids` (SGLang's decoder-only scoring), each item's
        label-token probabilities at its next token after the query."""
        if body.label_token_ids is None:
            token_items = isinstance(body.items, list) and not all(isinstance(x, str) for x in body.items)
            if isinstance(body.query, list) or token_items:
                raise InvalidInput(
                    "token ids as query / items are SGLang's decoder-only scoring, which needs label_token_ids; "
                    "vLLM's score takes texts"
                )
            return await score(body, request)
        named = dict.fromkeys(n for form in SCORE_FORMS for n in form if n != "items")
        vllm_fields = [n for n in named if getattr(body, n) is not None]
        if vllm_fields:
            raise InvalidInput(
                f"label_token_ids is SGLang's decoder-only scoring (query, items); {', '.join(vllm_fields)} "
                "are vLLM's score fields: give one form"
            )
        if body.query is None or body.items is None:
            raise InvalidInput("SGLang's decoder-only scoring needs query, items and label_token_ids")
        answer = await sglang.decoder_scores(
            service, body.model, body.query, body.items, body.label_token_ids, body.apply_softmax, body.item_first
        )
        return JSONResponse(answer.model_dump())

    @r.post("/score", response_model=ScoreResponse)
    async def score(body: ScoreRequest, request: Request) -> JSONResponse:
        """Each (text_1, text_2) pair scored as a prompt and its response: sigmoid(reward) unless
        `use_activation: false` (the raw reward)."""
        for name in dict.fromkeys(n for form in SCORE_FORMS for n in form):  # every list counts, read or not
            value = getattr(body, name)
            if isinstance(value, list):
                service.check_count(len(value))
        model, scores, tokens = await pair_scores(body, body.pairs(), "/score")
        return _ok(
            ScoreResponse(
                id=f"score-{request_id(request)}",
                created=int(time.time()),
                model=model.name,
                data=[ScoreData(index=i, score=s) for i, s in enumerate(scores)],
                usage=_usage(tokens),
            )
        )

    @r.post("/rerank", response_model=RerankResponse)
    @r.post("/v1/rerank", response_model=RerankResponse, include_in_schema=False)
    @r.post("/v2/rerank", response_model=RerankResponse, include_in_schema=False)
    async def rerank(body: RerankRequest, request: Request) -> JSONResponse:
        """The documents (responses) to one query (prompt), best first: best-of-n by the reward."""
        if not body.documents:
            raise InvalidInput("At least one text_pair element must be given")
        checked_texts(body.query, "query")
        checked_texts(body.documents, "documents")
        model, scores, tokens = await pair_scores(body, [(body.query, d) for d in body.documents], "/rerank")
        results = sorted(
            (
                RerankResult(index=i, document={"text": d}, relevance_score=s)
                for i, (d, s) in enumerate(zip(body.documents, scores))
            ),
            key=lambda x: x.relevance_score,
            reverse=True,
        )
        if 0 < body.top_n < len(results):
            results = results[: body.top_n]
        return _ok(
            RerankResponse(
                id=f"rerank-{request_id(request)}",
                model=model.name,
                results=results,
                usage={"prompt_tokens": tokens, "total_tokens": tokens},
            )
        )

    @r.post("/generative_scoring", response_model=GenerativeScoringResponse)
    async def generative_scoring(body: GenerativeScoringRequest, request: Request) -> JSONResponse:
        """A causal LM's (critic's, pointwise judge's) probability of `label_token_ids[0]` at the
        next token after query + item, for each item: one forward pass, no generation. With
        `apply_softmax` (the default) a softmax over just the label tokens, else the probability
        over the whole vocabulary. A prompt over the model's max_length is refused (400), never cut."""
        model = causal_lm(service, body.model, "/generative_scoring")
        prompts = query_item_prompts(
            body.query,
            body.items,
            item_first=body.item_first,
            add_special_tokens=body.add_special_tokens,
            join_texts=False,
        )
        result = await service.submit(service.next_token_job(model, prompts, body.label_token_ids))
        data = [
            ScoreData(index=i, score=label_probabilities(row, body.apply_softmax)[0])
            for i, row in enumerate(result.logprobs)
        ]
        return _ok(
            GenerativeScoringResponse(
                id=f"generative-scoring-{request_id(request)}",
                created=int(time.time()),
                model=model.name,
                data=data,
                usage=_usage(result.tokens),
            )
        )

    @r.post("/tokenize", response_model=TokenizeResponse)
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        """The token ids the reward model scores for this input (the card's ids: a conversation is
        rendered as scored, without a generation prompt)."""
        model = service.resolve(body.model, ("reward",))
        if isinstance(model, Ensemble):
            raise InvalidInput(
                f"'{model.name}' is an ensemble of models with their own tokenizers; tokenize with one of its members"
            )
        if body.return_token_strs:
            raise InvalidInput("return_token_strs is not supported here")
        if body.messages is not None:
            item, what = [m.as_message(f"messages[{i}]") for i, m in enumerate(body.messages)], "messages"
        else:
            item, what = body.prompt, "prompt"
        # no length limit: the client compares count with max_model_len itself, as with vLLM
        options = EncodeOptions(
            truncate="none", add_special_tokens=body.add_special_tokens, any_role=body.messages is not None
        )
        [encoded] = await service.submit(TokenizeJob(model.name, [item], what, options))
        tokens, _ = unpack_segments(encoded.ids)  # an encoder's text pair: plain vocabulary ids
        return _ok(TokenizeResponse(count=len(tokens), max_model_len=model.max_length, tokens=tokens))

    @r.get("/health", response_class=Response)
    async def health() -> Response:
        """vLLM's, SGLang's and TEI's health check: 200, empty body."""
        return Response(status_code=200)

    @r.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    return r
