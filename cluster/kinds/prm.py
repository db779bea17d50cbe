"""Process reward models (Qwen2.5-Math-PRM, Math-Shepherd): a reward per step, read at the tag after
each step, aggregated into one score."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from cluster.kinds.base import JUDGE_TEMPLATE_ONLY, SYSTEM_PROMPT, Kind, Op, ReportText, template_fields

StepAggregate = Literal["min", "last", "mean", "product"]


class Fields(BaseModel):
    reward_label: int | str | None = Field(
        None, description="a token classifier's positive label, by index or id2label name"
    )
    system_prompt: str | None = Field(None, description=SYSTEM_PROMPT)
    # how a response becomes steps, how the steps are tagged and what is read at each tag
    step_tag: str | None = Field(
        None,
        description="the token after each step where its reward is read "
        "(Qwen2.5-Math-PRM: '<extra_0>'; Math-Shepherd: 'ки')",
    )
    step_separator: str = Field("\n\n", min_length=1, description="splits a response given as one text into steps")
    step_format: str = Field(
        "{step}{tag}",
        description="one step as the model reads it; {index} is its number "
        "from 1 (Math-Shepherd: 'Step {index}: {step} {tag}')",
    )
    step_joiner: str = Field("", description="between formatted steps (Math-Shepherd: '\\n')")
    prm_template: str | None = Field(
        None,
        description="None: the chat template renders system, prompt and the "
        "tagged steps as the assistant turn (Qwen2.5-Math-PRM); else plain text with "
        "{prompt} and {response} (Math-Shepherd: '{prompt} {response}')",
    )
    step_labels: tuple[str | int, str | int] | None = Field(
        None,
        description="a causal-LM PRM: the (good, bad) tokens whose next-token probabilities at the tag give "
        "P(good) / (P(good) + P(bad)); strings are tokenized as the Math-Shepherd card does, ints are token ids",
    )
    step_aggregate: StepAggregate = Field(
        "min", description="one score from the step rewards (a request may choose another)"
    )


def check(spec: Any) -> None:
    if not spec.step_tag:
        raise ValueError(
            "a prm needs step_tag: the token after each step where its reward is read "
            "(Qwen2.5-Math-PRM: '<extra_0>'; Math-Shepherd: 'ки')"
        )
    fields = template_fields(spec.step_format, "step_format")
    if not {"step", "tag"} <= fields <= {"step", "tag", "index"}:
        raise ValueError(
            f"step_format must use {{step}} and {{tag}} (and may use {{index}}, the step's number from "
            f"1), got {sorted(fields)}"
        )
    if not spec.step_format.rstrip().endswith("{tag}"):
        raise ValueError(f"step_format must end with {{tag}} (the reward is read at the tag), got {spec.step_format!r}")
    if spec.prm_template is not None:
        fields = template_fields(spec.prm_template, "prm_template")
        if fields != {"prompt", "response"}:
            raise ValueError(f"prm_template must use exactly {{prompt}} and {{response}}, got {sorted(fields)}")
    if spec.step_labels is not None and spec.step_labels[0] == spec.step_labels[1]:
        raise ValueError(f"step_labels must be two different tokens (good, bad), got {list(spec.step_labels)}")


KIND = Kind(
    name="prm",
    title="a process reward model",
    summary="a process reward model: a reward per step",
    spec_fields=Fields,
    refused={
        "judge_template": JUDGE_TEMPLATE_ONLY,
        "reward_weights": "a prm's step reward is one label's probability: use reward_label (its positive "
        "class), not reward_weights",
    },
    fast_op=Op.SCORE,
    head="steps",
    encoder="steps",
    unit="steps",
    padding_side="right",
    fixed_padding=True,
    check=check,
    margin_label="aggregate step reward chosen - rejected",
    score_label="scores (aggregate of the step rewards)",
    report=ReportText(
        name="process reward model (prm)",
        score_axis="PRM solution score ({aggregate} of its step rewards)",
        scores="PRM solution scores",
        margins="PRM score margins",
        margin_axis="PRM margin: chosen solution score - rejected",
    ),
)
