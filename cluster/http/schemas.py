"""Request and response bodies for every HTTP route (pydantic, at the edge only; no Ray).

Our own /v1 routes reject unknown keys. The other protocols' routes (OpenRLHF's here; vLLM's,
SGLang's and TEI's in their modules) accept what those clients send, unknown keys included, as
their servers do, because their clients add fields over time.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from cluster.core.inputs import shown, unicode_problem, validate_conversation, validate_judge_item, validate_step_item
from cluster.core.results import STEP_AGGREGATES, Mode, check_mode


def _unicode(value: str) -> str:
    problem = unicode_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# A model's name as a request gives it: error messages repeat it, so it must be text an answer can carry
ModelName = Annotated[str, AfterValidator(_unicode)]


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


# a conversation (a list of messages) or pre-templated text; only the member that fits the value is
# tried, so a bad conversation is not also reported as "not a valid string"
Conversation = Annotated[
    Annotated[list[Message], Tag("list[Message]")] | Annotated[str, Tag("str")],
    Discriminator(lambda value: "str" if isinstance(value, str) else "list[Message]"),
]


# ---------------------------------------------------------------- /v1/rewards


class RewardsRequest(Strict):
    model: ModelName | None = None
    conversations: list[Conversation] = Field(min_length=1)

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


class StepRewardsRequest(Strict):
    """Solutions to score step by step: {prompt, steps: [...]} or {prompt, response} (split at the
    model's step_separator), with an optional system message; or conversations whose last message
    is the solution; or texts already holding the model's step tags."""

    model: ModelName | None = None
    items: list[dict[str, Any] | list[Message] | str] = Field(min_length=1)
    aggregate: str | None = None  # min | last | mean | product (default: the model's step_aggregate)

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


class RateRequest(Strict):
    """Responses to rate one by one: {prompt, response} and any other field the judge's template
    names (checked against the model's template by the service)."""

    model: ModelName | None = None
    items: list[dict[str, Any]] = Field(min_length=1)
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


class CompareRequest(Strict):
    model: ModelName | None = None
    prompt: str | None = None
    response_a: str | None = None
    response_b: str | None = None
    items: list[JudgeItem] | None = None

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
    items: list[JudgeItem] = Field(min_length=1)
    mode: Mode = "logits"
    debias: bool = False

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
    query: list[str]  # already templated prompt + response; may be empty (a shard of nothing)
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
    kind: Literal["reward", "critic", "prm", "pointwise"]
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
