"""The model kinds, one module each: everything kind-specific is declared there, and the rest of
the code asks this registry (`kind_of(spec)`) instead of comparing names. A new kind is one module
and one line below."""

from __future__ import annotations

from typing import Any

from cluster.kinds import critic, generative, pointwise, prm, reward
from cluster.kinds.base import Kind, Op, ReportText

KINDS: dict[str, Kind] = {k.name: k for k in (reward.KIND, critic.KIND, prm.KIND, pointwise.KIND, generative.KIND)}
NAMES: tuple[str, ...] = tuple(KINDS)


def kind_of(what: Any) -> Kind:
    """The Kind of a spec, a served model, a Kind or a kind's name."""
    if isinstance(what, Kind):
        return what
    name = what if isinstance(what, str) else what.kind
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"kind must be one of {', '.join(NAMES)}; got {name!r}") from None


def report_text(name: str | None) -> ReportText:
    """How a report names the numbers of a kind recorded by name (a reward model's words for a name
    this code does not know)."""
    kind = KINDS.get(name) if isinstance(name, str) else None
    return kind.report if kind else ReportText()


def unit_of(name: str | None) -> str | None:
    """The unit of a kind recorded by name (a run's summary), None for a name this code does not know."""
    kind = KINDS.get(name) if isinstance(name, str) else None
    return kind.unit if kind else None


__all__ = ["KINDS", "NAMES", "Kind", "Op", "ReportText", "kind_of", "report_text", "unit_of"]
