"""Process reward models (Qwen2.5-Math-PRM, Math-Shepherd): a reward per step, read at the tag after
each step, aggregated into one score."""

from __future__ import annotations

from typing import Any

from cluster.kinds.base import Kind, Op, template_fields


def check(spec: Any) -> None:
    if spec.judge_template is not None:
        raise ValueError("judge_template is only for kind='critic' or 'pointwise'")
    if spec.reward_label is not None and spec.reward_weights is not None:
        raise ValueError("set reward_label or reward_weights, not both")
    if spec.reward_weights is not None:
        raise ValueError("a prm's step reward is one label's probability: use reward_label (its positive "
                         "class), not reward_weights")
    if not spec.step_tag:
        raise ValueError("a prm needs step_tag: the token after each step where its reward is read "
                         "(Qwen2.5-Math-PRM: '<extra_0>'; Math-Shepherd: 'ки')")
    fields = template_fields(spec.step_format, "step_format")
    if not {"step", "tag"} <= fields <= {"step", "tag", "index"}:
        raise ValueError(f"step_format must use {{step}} and {{tag}} (and may use {{index}}, the step's number from "
                         f"1), got {sorted(fields)}")
    if not spec.step_format.rstrip().endswith("{tag}"):
        raise ValueError(f"step_format must end with {{tag}} (the reward is read at the tag), got {spec.step_format!r}")
    if spec.prm_template is not None:
        fields = template_fields(spec.prm_template, "prm_template")
        if fields != {"prompt", "response"}:
            raise ValueError(f"prm_template must use exactly {{prompt}} and {{response}}, got {sorted(fields)}")
    if spec.step_labels is not None and spec.step_labels[0] == spec.step_labels[1]:
        raise ValueError(f"step_labels must be two different tokens (good, bad), got {list(spec.step_labels)}")


KIND = Kind(
    name="prm", title="a process reward model", summary="a process reward model: a reward per step",
    fields=frozenset({"reward_label", "system_prompt", "step_tag", "step_separator", "step_format", "step_joiner",
                      "prm_template", "step_labels", "step_aggregate"}),
    fast_op=Op.SCORE, ops=(Op.SCORE,), head="steps", encoder="steps", unit="steps", padding_side="right",
    fixed_padding=True, check=check, margin_label="aggregate step reward chosen - rejected",
    score_label="scores (aggregate of the step rewards)",
)
