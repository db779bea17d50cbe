"""Request and response bodies for every HTTP route (pydantic, at the edge only; no Ray).

Our own /v1 routes reject unknown keys. The other protocols' routes (OpenRLHF's here; vLLM's,
SGLang's and TEI's in their modules) accept what those clients send, unknown keys included, as
their servers do, because their clients add fields over time.

The models are /openapi.json's request schemas, so they state what the code enforces: typed fields
are strict where the protocol is typed (a bool is not 0, nor a token id; `StrictBool`, `JSONInt`);
what the in-process checks refuse with their own words (an empty text, an empty conversation, a
value out of a set) is stated in the schema with `checked(...)`, the check itself staying where it
is; a list whose length is the request's item count is marked `COUNTED` (the app's
max_items_per_request becomes its maxItems, cluster/http/openapi.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from cluster.core.inputs import shown, unicode_problem, validate_conversation, validate_judge_item, validate_step_item
from cluster.core.results import STEP_AGGREGATES, Mode, check_mode
from cluster.kinds import NAMES


def _unicode(value: str) -> str:
    problem = unicode_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# A model's name as a request gives it: error messages repeat it, so it must be text an answer can carry
ModelName = Annotated[
    str,
    AfterValidator(_unicode),
    Field(
        description="A served model (GET /v1/models: its name, an alias or its path) of a kind this route "
        "takes; none: the first served one of such a kind."
    ),
]

# a list whose length is the request's item count (ScoringService.check_count, 413 over the limit):
# /openapi.json gives it maxItems = max_items_per_request (cluster/http/openapi.py), put on the union
# member that counts; PAIRS: each element is two of the core's items (a pair compared by a reward
# model's two rewards), so half as many fit
COUNTED_KEY = "x-counted-items"
COUNTED: dict[str, Any] = {COUNTED_KEY: 1}
PAIRS: dict[str, Any] = {COUNTED_KEY: 2}


def checked(**keywords: Any) -> Any:
    """JSON Schema `keywords` for what the code checks itself, in its own words (the in-process
    checks' "the text is empty", not pydantic's): stated in /openapi.json, enforced where it was."""
    return Field(json_schema_extra=keywords)


# text the encoders take: not empty ("the text is empty")
Text = Annotated[str, checked(minLength=1)]


def _json_integer(value: Any) -> Any:
    """An integer as JSON Schema has it: a number with no fractional part (pydantic's int takes
    that), never a bool nor a string (which pydantic's lax int would take: `false` as 0)."""
    if isinstance(value, bool | str):
        raise ValueError("Input should be a valid integer")
    return value


# an integer as JSON Schema has it (`5` or `5.0`; not `false`, not `"5"`)
JSONInt = Annotated[int, BeforeValidator(_json_integer)]
# one input's token ids as the client's tokenizer gave them: not empty, none negative; the top is the
# model's vocabulary
TokenIds = Annotated[
    list[Annotated[JSONInt, checked(minimum=0)]],
    checked(minItems=1, description="One input's token ids, each below the model's vocabulary size."),
]
ABSENT = {"type": "null"}  # a field of another form: absent or null (null reads as absent)


def one_of_forms(*forms: tuple[dict[str, str | list[str]], list[str]]) -> dict[str, Any]:
    """`oneOf` the forms a body takes: (the fields each form gives -> their JSON types but null, the
    fields it leaves out)."""
    return {
        "oneOf": [
            {
                "required": list(given),
                "properties": {**{name: {"type": t} for name, t in given.items()}, **dict.fromkeys(absent, ABSENT)},
            }
            for given, absent in forms
        ]
    }


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        """Unknown keys refused, named as the client wrote them but cut short (pydantic's own
        error puts each whole key in the error's location, so a key of 100k characters would come
        back in the message)."""
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown field(s) {shown(unknown)} (expected {', '.join(cls.model_fields)})")
        return data


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class JudgeItem(Strict):
    prompt: str
    response_a: str
    response_b: str


# The in-process checks (cluster/engine/encoders.py) run first on what our routes take, so a bad
# conversation or judge item is named over HTTP in the words `load_model(...).score` uses
# (`conversations[1][0].role: unknown role 'bot' ...`). They raise InvalidInput, whose message
# names the whole location; the app's validation handler repeats it as is (app.describe). The
# schema's own checks (unknown keys, ...) still apply to what they pass.


def _conversations(value: Any) -> Any:
    if isinstance(value, list):
        for i, conv in enumerate(value):
            if not isinstance(conv, str):
                validate_conversation(conv, f"conversations[{i}]", require_assistant_last=True)
    return value


def _judge_items(value: Any) -> Any:
    if isinstance(value, list):
        for i, item in enumerate(value):
            validate_judge_item(item, f"items[{i}]")
    return value


# a conversation (a list of messages, the last one the assistant's response to score: JSON Schema has
# no keyword for an array's last item, so the description says it) or pre-templated text; only the
# member that fits the value is tried, so a bad conversation is not also reported as "not a valid string"
ScoredConversation = Annotated[
    list[Message],
    checked(minItems=1, description="The messages; the last one is the assistant's response to score."),
]
Conversation = Annotated[
    Annotated[ScoredConversation, Tag("list[Message]")] | Annotated[Text, Tag("str")],
    Discriminator(lambda value: "str" if isinstance(value, str) else "list[Message]"),
]


# ---------------------------------------------------------------- /v1/rewards


class RewardsRequest(Strict):
    model: ModelName | None = None
    conversations: list[Conversation] = Field(min_length=1, json_schema_extra=COUNTED)

    _checked = field_validator("conversations", mode="before")(_conversations)


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


def usage(tokens: int) -> Usage:
    return Usage(prompt_tokens=tokens, total_tokens=tokens)


def ok(body: BaseModel) -> JSONResponse:
    """A route's answer, serialized once (the route's response_model documents it)."""
    return JSONResponse(body.model_dump())


class RewardsResponse(BaseModel):
    model: str
    scores: list[float]  # shaped when the model or ensemble has `shaping`; raw logits otherwise
    truncated: list[bool]
    usage: Usage
    raw_scores: list[float] | None = None  # the model's logits, when shaping changed them
    values: list[list[float]] | None = None  # every output label per item, for a multi-output model
    labels: list[str] | None = None  # the names of those outputs (the model's id2label)
    step_rewards: list[list[float]] | None = None  # a prm: each item's step rewards (`scores` aggregate them)
    aggregate: str | None = None  # a prm: how `scores` aggregate the step rewards


# ---------------------------------------------------------------- /v1/step_rewards (process reward models)


def _step_items(value: Any) -> Any:
    """The in-process checks on each item: {prompt, steps | response, system?} or a conversation."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict):
                validate_step_item(item, f"items[{i}]")
            elif not isinstance(item, str):
                validate_conversation(item, f"items[{i}]", require_assistant_last=True)
    return value


def _aggregate(value: Any) -> Any:
    if value is not None and value not in STEP_AGGREGATES:
        raise ValueError(f"must be one of {', '.join(STEP_AGGREGATES)}, got {shown(value)}")
    return value


# a prm's item as validate_step_item checks it: the prompt, and the solution as steps or as one response
STEP_ITEM = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string"},
        "steps": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "response": {"type": "string"},
        "system": {"type": "string"},
    },
    "required": ["prompt"],
    "additionalProperties": False,
    "oneOf": [{"required": ["steps"]}, {"required": ["response"]}],
}


class StepRewardsRequest(Strict):
    """Solutions to score step by step: {prompt, steps: [...]} or {prompt, response} (split at the
    model's step_separator), with an optional system message; or conversations whose last message
    is the solution; or texts already holding the model's step tags."""

    model: ModelName | None = None
    items: list[Annotated[dict[str, Any], WithJsonSchema(STEP_ITEM)] | ScoredConversation | Text] = Field(
        min_length=1, json_schema_extra=COUNTED
    )
    # min | last | mean | product (default: the model's step_aggregate)
    aggregate: Annotated[str, checked(enum=list(STEP_AGGREGATES))] | None = None

    _checked = field_validator("items", mode="before")(_step_items)
    _how = field_validator("aggregate", mode="before")(_aggregate)


class StepResult(BaseModel):
    score: float  # the aggregate of step_rewards
    step_rewards: list[float]  # per step: the probability that the step is correct
    num_steps: int
    weakest_step: int  # the index of the lowest step reward
    truncated: bool  # always false: a prm's input is never cut
    num_tokens: int


def step_results(results) -> list[StepResult]:
    """The core's StepRewards in the shape every door answers (/v1/step_rewards, the handle API)."""
    return [
        StepResult(
            score=r.score,
            step_rewards=r.step_rewards,
            num_steps=len(r.step_rewards),
            weakest_step=r.weakest_step,
            truncated=r.truncated,
            num_tokens=r.num_tokens,
        )
        for r in results
    ]


class StepRewardsResponse(BaseModel):
    model: str
    kind: Literal["prm"] = "prm"
    aggregate: str
    results: list[StepResult]
    usage: Usage


# ---------------------------------------------------------------- /v1/rate (pointwise judges)


# a pointwise judge's item: the prompt, the response, and the other texts its template names
RATING_ITEM = {
    "type": "object",
    "properties": {"prompt": {"type": "string"}, "response": {"type": "string"}},
    "required": ["prompt", "response"],
    "additionalProperties": {"type": "string"},
    "description": "Other fields: the texts the judge's template names (e.g. Prometheus' rubric), no others.",
}


class RateRequest(Strict):
    """Responses to rate one by one: {prompt, response} and any other field the judge's template
    names (checked against the model's template by the service)."""

    model: ModelName | None = None
    items: list[Annotated[dict[str, Any], WithJsonSchema(RATING_ITEM)]] = Field(min_length=1, json_schema_extra=COUNTED)
    mode: Mode = "logits"

    _mode = field_validator("mode", mode="before")(check_mode)


class RatingResult(BaseModel):
    expected: float | None  # the probability-weighted rating (None: a generated answer stated none)
    rating: float | None  # logits: the most probable rating; generate: the one the answer states last
    probs: list[float] | None  # P(rating) over the scale, in `ratings` order
    truncated: bool
    text: str | None = None  # generate mode: the judge's answer


def rating_results(results) -> list[RatingResult]:
    """The core's Ratings in the shape every door answers (/v1/rate, the handle API)."""
    return [
        RatingResult(expected=r.expected, rating=r.rating, probs=r.probs, truncated=r.truncated, text=r.text)
        for r in results
    ]


class RateResponse(BaseModel):
    model: str
    kind: Literal["pointwise"] = "pointwise"
    ratings: list[str]  # the scale, as the judge writes it
    results: list[RatingResult]
    usage: Usage


# ---------------------------------------------------------------- /v1/compare and /v1/judge


SINGLE = {"prompt": "string", "response_a": "string", "response_b": "string"}


class CompareRequest(Strict):
    """One pair (prompt, response_a, response_b) or a list of them (items)."""

    model_config = ConfigDict(json_schema_extra=one_of_forms((SINGLE, ["items"]), ({"items": "array"}, list(SINGLE))))

    model: ModelName | None = None
    prompt: str | None = None
    response_a: str | None = None
    response_b: str | None = None
    # a reward model compares a pair by two conversations' rewards, each counted (so PAIRS)
    items: Annotated[list[JudgeItem], checked(minItems=1, **PAIRS)] | None = None

    _checked = field_validator("items", mode="before")(_judge_items)

    @model_validator(mode="after")
    def _one_form(self) -> CompareRequest:
        single = (self.prompt, self.response_a, self.response_b)
        if self.items is None and any(v is None for v in single):
            raise ValueError("give prompt, response_a and response_b, or items")
        if self.items is not None and any(v is not None for v in single):
            raise ValueError("give either items or prompt/response_a/response_b, not both")
        if self.items is not None and not self.items:
            raise ValueError("items is empty")
        return self

    def judge_items(self) -> list[dict[str, str]]:
        if self.items is not None:
            return [i.model_dump() for i in self.items]
        return [{"prompt": self.prompt, "response_a": self.response_a, "response_b": self.response_b}]


class JudgeRequest(Strict):
    model: ModelName | None = None
    items: list[JudgeItem] = Field(min_length=1, json_schema_extra=COUNTED)
    mode: Mode = "logits"
    debias: StrictBool = False

    _checked = field_validator("items", mode="before")(_judge_items)
    _mode = field_validator("mode", mode="before")(check_mode)


class Comparison(BaseModel):
    winner: Literal["A", "B"] | None
    prob_a: float | None
    truncated: bool
    reward_a: float | None = None  # reward models
    reward_b: float | None = None
    text: str | None = None  # critics, generate mode
    text_swapped: str | None = None


def comparisons(results) -> list[Comparison]:
    """The core's results (`Comparison` of a reward model, `Verdict` of a critic) in the one shape
    every door answers: /v1/compare, /v1/judge and the handle API (deployments/ingress.py) alike."""
    return [Comparison(**r.__dict__) for r in results]


class CompareResponse(BaseModel):
    model: str
    kind: Literal["reward", "critic"]
    results: list[Comparison]
    usage: Usage


# ---------------------------------------------------------------- /get_reward (OpenRLHF)


class GetRewardRequest(Lenient):
    # already templated prompt + response; may be empty (a shard of nothing); a text is not empty,
    # nor only padding and EOS tokens (stripped as OpenRLHF's server did)
    query: list[Text] = Field(json_schema_extra=COUNTED)
    prompts: list[str] | None = None
    labels: list[Any] | None = None
    model: ModelName | None = None


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]  # merged into OpenRLHF's metrics: names that cannot clash


# ---------------------------------------------------------------- /v1/models, errors


class ModelCard(BaseModel):
    """One served model: the OpenAI / vLLM model card (`id`, `object`, `created`, `owned_by`,
    `root`, `parent`, `max_model_len`, `permission`) plus ours."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "scoring-cluster"
    root: str | None = None  # the path it was loaded from (vLLM's root)
    parent: str | None = None
    max_model_len: int
    permission: list[dict[str, Any]] = Field(default_factory=list)
    name: str
    kind: Literal[NAMES]
    max_length: int
    default: bool
    aliases: list[str] = Field(default_factory=list)  # other names requests may use (its path too)
    members: dict[str, float] | None = None  # an ensemble: member model -> weight
    shaping: dict[str, Any] | None = None  # normalize / clip applied to what the routes return


class ModelsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorBody
