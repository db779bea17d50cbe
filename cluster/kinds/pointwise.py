"""Pointwise judges (MT-Bench single-answer grading, Prometheus 2): a rating of one response on a
scale, read from one forward pass (the expected rating) or generated."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from pydantic import Field

from cluster.kinds.base import (
    REWARD_LABEL_ONLY,
    SYSTEM_PROMPT,
    JudgeFields,
    Kind,
    Op,
    ReportText,
    check_verdict_pattern,
    template_fields,
)

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
        raise ValueError(
            f"judge_template of a pointwise judge must use the fields {{input}} and {{response}} "
            f"(missing: {missing}); other fields are read from each item"
        )
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


class Fields(JudgeFields):
    system_prompt: str | None = Field(None, description=SYSTEM_PROMPT)
    # the rating strings (each read at one token), how the answer writes one, their values
    ratings: tuple[str, ...] = tuple(str(i) for i in range(1, 11))
    rating_format: str = Field("[[{rating}]]", description="how the judge writes its rating, {rating} in it")
    rating_values: tuple[float, ...] | None = Field(
        None, description="each rating's value (default: the rating strings read as numbers)"
    )

    @property
    def template(self) -> str:
        return self.judge_template if self.judge_template is not None else pointwise_template()

    @property
    def rating_numbers(self) -> tuple[float, ...]:
        """Each rating's value, in scale order."""
        return self.rating_values if self.rating_values is not None else tuple(float(r) for r in self.ratings)

    @property
    def rating_strings(self) -> tuple[str, ...]:
        """Each rating as the judge writes it (`rating_format` filled in)."""
        return tuple(self.rating_format.replace("{rating}", r) for r in self.ratings)


def check(spec: Any) -> None:
    check_ratings(spec.ratings, spec.rating_format, spec.rating_values)
    if spec.judge_template is not None:
        check_rating_template(spec.judge_template)
    check_verdict_pattern(spec.verdict_pattern)


KIND = Kind(
    name="pointwise",
    title="a pointwise judge",
    summary="a pointwise judge: a rating on a scale",
    spec_fields=Fields,
    refused={"reward_label": REWARD_LABEL_ONLY, "reward_weights": REWARD_LABEL_ONLY},
    fast_op=Op.VERDICTS,
    head="next_token",
    encoder="rating",
    unit="rating",
    padding_side="left",
    fixed_padding=True,
    needs_chat_template=True,
    check=check,
    margin_label="expected rating chosen - rejected",
    score_label="expected ratings",
    report=ReportText(
        name="pointwise judge",
        score_axis="judge's expected rating",
        scores="expected ratings",
        margins="rating margins",
        margin_axis="rating margin: chosen expected rating - rejected",
    ),
)
