"""Reward models: one scalar per conversation (Skywork-Reward, ArmoRM's attribute heads), from a
sequence classifier's head at the last token."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from cluster.kinds.base import JUDGE_TEMPLATE_ONLY, Kind, Op


class Fields(BaseModel):
    # reward models with several outputs (attribute / multi-objective heads): the scalar reward
    reward_label: int | str | None = Field(None, description="one output label, by index or id2label name")
    reward_weights: list[float] | dict[str, float] | None = Field(
        None, description="the scalar reward as a weighted sum over the output labels"
    )


def check(spec: Any) -> None:
    if spec.reward_label is not None and spec.reward_weights is not None:
        raise ValueError("set reward_label or reward_weights, not both")


KIND = Kind(
    name="reward",
    title="a reward model",
    summary="a reward model: one scalar per conversation",
    spec_fields=Fields,
    refused={"judge_template": JUDGE_TEMPLATE_ONLY},
    fast_op=Op.SCORE,
    head="sequence",
    encoder="chat",
    unit="reward",
    padding_side="right",
    check=check,
)
