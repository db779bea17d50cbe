"""ModelSpec: what to load and how to run it (pydantic at the edge, unknown keys rejected)."""

from __future__ import annotations

import string
from functools import cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cluster.errors import ConfigError

JUDGE_FIELDS = ("input", "response_a", "response_b")


@cache
def skywork_critic_template() -> str:
    """The Skywork-Critic judge prompt, verbatim (the format the model was trained on)."""
    return resources.files("cluster").joinpath("templates/skywork_critic.txt").read_text("utf-8")


def format_validation_error(err: ValidationError, what: str) -> str:
    """One line per problem, naming the field: `ModelSpec.dtype: Input should be ...`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{what}: unknown field '{loc}'")
        else:
            lines.append(f"{what}.{loc}: {e['msg']}" if loc else f"{what}: {e['msg']}")
    return "; ".join(lines)


class StrictModel(BaseModel):
    """Pydantic model that rejects unknown keys and raises ConfigError with field-named messages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, type(self).__name__)) from None

    @classmethod
    def parse(cls, data: Any):
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        return cls(**data)


class ModelSpec(StrictModel):
    """One reward model or critic.

    `path` is a hub id or a local directory written by `save_pretrained`. Defaults follow the model
    cards: raw logits, bf16 on GPU (fp32 on CPU), left truncation that keeps the end of the response.
    """

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    path: str = Field(min_length=1)
    kind: Literal["reward", "critic"]
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    max_length: int = Field(4096, ge=8, description="tokens per item, BOS included")
    max_batch_tokens: int = Field(
        16384, ge=8, description="padded tokens per forward pass (longest item x batch size)"
    )
    max_batch_size: int = Field(256, ge=1)
    truncation: Literal["left", "error"] = "left"
    padding_side: Literal["auto", "left", "right"] = "auto"
    trust_remote_code: bool = False
    # critic only
    judge_template: str | None = None
    verdicts: tuple[str, str] = ("[[A]]", "[[B]]")
    max_new_tokens: int = Field(64, ge=1, le=8192)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.max_batch_tokens < self.max_length:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) must be >= max_length "
                f"({self.max_length}), or the longest item could never be scored"
            )
        if self.kind == "reward":
            if self.judge_template is not None:
                raise ValueError("judge_template is only for kind='critic'")
        else:
            if self.padding_side == "right":
                raise ValueError("a critic reads the last position and generates: padding_side must be left")
            if self.verdicts[0] == self.verdicts[1] or not all(self.verdicts):
                raise ValueError("verdicts must be two different non-empty strings")
            if self.judge_template is not None:
                check_judge_template(self.judge_template)
        return self

    @property
    def resolved_padding_side(self) -> str:
        if self.padding_side != "auto":
            return self.padding_side
        return "left" if self.kind == "critic" else "right"

    @property
    def template(self) -> str:
        return self.judge_template if self.judge_template is not None else skywork_critic_template()


def check_judge_template(template: str) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as err:
        raise ValueError(f"judge_template is not a valid format string: {err}") from None
    missing = [f for f in JUDGE_FIELDS if f not in fields]
    extra = sorted(fields - set(JUDGE_FIELDS))
    if missing or extra:
        raise ValueError(
            f"judge_template must use exactly the fields {{input}}, {{response_a}}, {{response_b}}"
            f" (missing: {missing or 'none'}, unexpected: {extra or 'none'})"
        )
