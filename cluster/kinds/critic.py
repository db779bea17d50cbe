"""Pairwise critics (Skywork-Critic): which of two responses is better, `[[A]]` or `[[B]]`, read from
one forward pass (P(A)) or generated."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from pydantic import Field

from cluster.kinds.base import (
    REWARD_LABEL_ONLY,
    JudgeFields,
    Kind,
    Op,
    ReportText,
    check_verdict_pattern,
    template_fields,
)

JUDGE_FIELDS = ("input", "response_a", "response_b")


@cache
def skywork_critic_template() -> str:
    """The Skywork-Critic judge prompt, verbatim (the format the model was trained on)."""
    return resources.files("cluster").joinpath("templates/skywork_critic.txt").read_text("utf-8")


def check_judge_template(template: str) -> None:
    fields = template_fields(template)
    missing = [f for f in JUDGE_FIELDS if f not in fields]
    extra = sorted(fields - set(JUDGE_FIELDS))
    if missing or extra:
        raise ValueError(
            f"judge_template must use exactly the fields {{input}}, {{response_a}}, {{response_b}}"
            f" (missing: {missing or 'none'}, unexpected: {extra or 'none'})"
        )


class Fields(JudgeFields):
    verdicts: tuple[str, str] = Field(("[[A]]", "[[B]]"), description="what the critic writes for A and for B")

    @property
    def template(self) -> str:
        return self.judge_template if self.judge_template is not None else skywork_critic_template()


def check(spec: Any) -> None:
    if spec.verdicts[0] == spec.verdicts[1] or not all(spec.verdicts):
        raise ValueError("verdicts must be two different non-empty strings")
    if spec.judge_template is not None:
        check_judge_template(spec.judge_template)
    check_verdict_pattern(spec.verdict_pattern)


KIND = Kind(
    name="critic",
    title="a critic",
    summary="a pairwise critic: [[A]] or [[B]]",
    spec_fields=Fields,
    refused={"reward_label": REWARD_LABEL_ONLY, "reward_weights": REWARD_LABEL_ONLY},
    fast_op=Op.VERDICTS,
    head="next_token",
    encoder="judge",
    unit="pair",
    padding_side="left",
    fixed_padding=True,
    needs_chat_template=True,
    check=check,
    margin_label="critic log-odds that chosen wins",
    report=ReportText(name="critic", margins="critic margins", margin_axis="critic margin: log-odds that chosen wins"),
)
