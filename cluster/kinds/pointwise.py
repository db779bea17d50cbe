"""Pointwise judges (MT-Bench single-answer grading, Prometheus 2): a rating of one response on a
scale, read from one forward pass (the expected rating) or generated."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from cluster.kinds.base import Kind, Op, template_fields

RATING_FIELDS = ("input", "response")  # a pointwise judge's template; any other field comes from the item


@cache
def pointwise_template() -> str:
    """The default pointwise judge prompt, adapted from MT-Bench's single-answer grading prompt
    (FastChat's judge_prompts.jsonl, "single-v1"): the same instructions, but the rating asked for
    first, so that one forward pass reads it (MT-Bench's own asks for an explanation first: use it
    with mode="generate")."""
    return resources.files("cluster").joinpath("templates/pointwise_rating.txt").read_text("utf-8").rstrip("\n")


def rating_extra_fields(template: str) -> tuple[str, ...]:
    """The fields of a pointwise template that each item supplies itself (e.g. Prometheus' rubric)."""
    return tuple(sorted(template_fields(template) - set(RATING_FIELDS)))


def check_rating_template(template: str) -> None:
    fields = template_fields(template)
    missing = [f for f in RATING_FIELDS if f not in fields]
    if missing:
        raise ValueError(f"judge_template of a pointwise judge must use the fields {{input}} and {{response}} "
                         f"(missing: {missing}); other fields are read from each item")
    bad = sorted(f for f in fields if not f.isidentifier() or f in ("prompt",))
    if bad:
        raise ValueError(f"judge_template: field(s) {bad} cannot be item keys; use names such as {{rubric}}")


def check_ratings(ratings: Sequence[str], rating_format: str, values: Sequence[float] | None) -> None:
    if len(ratings) < 2 or any(not r for r in ratings) or len(set(ratings)) != len(ratings):
        raise ValueError(f"ratings must be at least two different non-empty strings, got {list(ratings)}")
    if rating_format.count("{rating}") != 1:
        raise ValueError(f"rating_format must hold {{rating}} once, got {rating_format!r}")
    if values is not None:
        if len(values) != len(ratings):
            raise ValueError(f"rating_values has {len(values)} values for {len(ratings)} ratings")
        return
    bad = []
    for r in ratings:
        try:
            float(r)
        except ValueError:
            bad.append(r)
    if bad:
        raise ValueError(f"ratings {bad} are not numbers; give rating_values (one number per rating)")


def check(spec: Any) -> None:
    check_ratings(spec.ratings, spec.rating_format, spec.rating_values)
    if spec.judge_template is not None:
        check_rating_template(spec.judge_template)


KIND = Kind(
    name="pointwise", title="a pointwise judge", summary="a pointwise judge: a rating on a scale",
    fields=frozenset({"judge_template", "system_prompt", "max_new_tokens", "ratings", "rating_format",
                      "rating_values"}),
    fast_op=Op.VERDICTS, ops=(Op.VERDICTS, Op.GENERATE), head="next_token", encoder="rating", unit="rating",
    padding_side="left", fixed_padding=True, needs_chat_template=True, generates=True,
    template=pointwise_template, check=check, margin_label="expected rating chosen - rejected",
    score_label="expected ratings",
)
