"""slime's remote reward model (`--rm-type remote_rm --rm-url URL`): POST /slime/reward.

slime (THUDM/slime, slime/rollout/rm_hub/__init__.py @624b824a `remote_rm`) posts
`{"prompt": sample.prompt, "response": sample.response, "label": sample.label}` with aiohttp to the
URL as given (no path added, no header), calls `raise_for_status()` and stores `await resp.json()`
as the sample's reward: a bare JSON number (or, with `--reward-key`, a dict). So this route answers
a bare number, as application/json (aiohttp's `json()` refuses any other content type):

- a reward model (or an ensemble): the reward of the conversation prompt + response, as
  /v1/rewards scores it (shaped where the model has `shaping`). A string prompt is one user turn;
  a message list is used as it is (any role its chat template takes); the response is the
  assistant turn after it;
- a pointwise judge: its expected rating of the response (one forward pass, as /v1/rate), the
  prompt a string or one user message; `label` fills a `{label}` field of the judge's template;
- any other kind: 400.

The model is `?model=NAME` in the URL (the URL is all slime lets one configure), else the first
reward model served, else the first pointwise judge. `label` is read by nothing else (a reward
model takes none). Keys: slime sends no header; put the key in the URL as its password
(`http://slime:KEY@HEAD:8000/slime/reward`: aiohttp sends it as HTTP Basic, which the app takes,
and leaves it out of the URL it reports in errors), or trust the trainer's network.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import Field, RootModel

from cluster.core.config import Ensemble
from cluster.core.errors import InvalidInput
from cluster.core.inputs import EncodeOptions, check_text, validate_conversation
from cluster.core.service import ScoringService
from cluster.http.schemas import Lenient, ModelName, Text
from cluster.kinds import KINDS, NAMES, kind_of
from cluster.kinds.pointwise import rating_extra_fields

# what answers one number for a prompt and its response: a reward, or a rating
ONE_NUMBER_KINDS = tuple(name for name, kind in KINDS.items() if kind.unit in ("reward", "rating"))
ANY_ROLE = EncodeOptions(any_role=True)  # slime's messages are the dataset's, in any role its template takes
MODEL_PARAMETER = (
    "The model: a reward model (or ensemble) or a pointwise judge (default: the first reward model served)."
)


class SlimeMessage(Lenient):
    """A chat message of slime's prompt: any role the model's chat template takes."""

    role: Text
    content: str


class SlimeRewardRequest(Lenient):
    """slime's `Sample` fields (slime/utils/types.py): `prompt` is a string or chat messages,
    `label` may be null (any JSON: only a judge template's {label} reads it, as a string)."""

    prompt: str | Annotated[list[SlimeMessage], Field(min_length=1)] = Field(
        description="The prompt text (one user turn) or chat messages (at least one)."
    )
    response: str = Field(description="The policy's response: the assistant turn scored.")
    label: Any = Field(None, description="The sample's label; read only by a judge template with a {label} field.")


class SlimeReward(RootModel[float]):
    """The reward: a bare JSON number (slime stores `await resp.json()` as the sample's reward)."""


def router(service: ScoringService) -> APIRouter:
    r = APIRouter()

    @r.post("/slime/reward", response_model=SlimeReward)
    async def slime_reward(
        body: SlimeRewardRequest,
        model: Annotated[ModelName | None, Query(description=MODEL_PARAMETER)] = None,
    ) -> JSONResponse:
        """One number for slime's sample: a reward model's reward of prompt + response, or a
        pointwise judge's expected rating of the response."""
        target = resolve(service, model)
        check_text(body.response, "response")
        prompt = body.prompt if isinstance(body.prompt, str) else [m.model_dump() for m in body.prompt]
        if isinstance(target, Ensemble) or kind_of(target).scalar_reward:
            head = (
                [{"role": "user", "content": check_text(prompt, "prompt")}]
                if isinstance(prompt, str)
                else validate_conversation(prompt, "prompt", require_assistant_last=False, any_role=True)
            )
            conversation = [*head, {"role": "assistant", "content": body.response}]
            result = await service.submit(service.rewards_job(target, [conversation], "prompt", ANY_ROLE))
            return JSONResponse(result.scores[0])
        item = {"prompt": judge_prompt(prompt), "response": body.response}
        if "label" in rating_extra_fields(target.template):
            if not isinstance(body.label, str):
                raise InvalidInput(
                    f"label: model '{target.name}' fills its template's {{label}} with the sample's label, "
                    f"a string; got {type(body.label).__name__}"
                )
            item["label"] = body.label
        rated = await service.submit(service.rate_job(target, [item]))
        return JSONResponse(rated.results[0].expected)

    return r


def resolve(service: ScoringService, name: str | None):
    """The reward model, ensemble or pointwise judge named (none: the first reward model, else the
    first pointwise judge); another kind is refused, saying what this route answers."""
    try:
        return service.resolve(name, ONE_NUMBER_KINDS)
    except InvalidInput:
        other = service.resolve(name, NAMES)
        raise InvalidInput(
            f"model '{other.name}' is {kind_of(other).title}; /slime/reward answers one number per sample: "
            "a reward model's reward or a pointwise judge's expected rating"
        ) from None


def judge_prompt(prompt: str | list[dict[str, Any]]) -> str:
    """A pointwise judge rates one prompt text: a string, or a list of one user message."""
    if isinstance(prompt, str):
        return check_text(prompt, "prompt")
    messages = validate_conversation(prompt, "prompt", require_assistant_last=False, any_role=True)
    if [m["role"] for m in messages] != ["user"]:
        raise InvalidInput(
            "prompt: a pointwise judge rates one prompt text and one response; send the prompt as a string "
            f"or one user message (got roles {[m['role'] for m in messages]})"
        )
    return messages[0]["content"]
