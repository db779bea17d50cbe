"""Reward models: one scalar per conversation (Skywork-Reward, ArmoRM's attribute heads), from a
sequence classifier's head at the last token."""

from __future__ import annotations

from typing import Any

from cluster.kinds.base import Kind, Op


def check(spec: Any) -> None:
    if spec.judge_template is not None:
        raise ValueError("judge_template is only for kind='critic' or 'pointwise'")
    if spec.reward_label is not None and spec.reward_weights is not None:
        raise ValueError("set reward_label or reward_weights, not both")


KIND = Kind(
    name="reward", title="a reward model", summary="a reward model: one scalar per conversation",
    fields=frozenset({"reward_label", "reward_weights"}),
    fast_op=Op.SCORE, ops=(Op.SCORE,), head="sequence", encoder="chat", unit="reward", padding_side="right",
    check=check,
)
