"""The configuration reference, docs/configuration.md, rendered from the pydantic models themselves
(name, type and constraints, default, description of every field), so it cannot drift from them:
tests/unit/test_config_reference.py regenerates it and compares.

    python -m cluster.cli.config_reference > docs/configuration.md

`render(sections)` walks whatever (title, pydantic model) pairs it is given; `default_sections()`
lists the app config, the model spec (the fields every kind shares, then each kind's own, from the
kinds registry) and the Ray Data pipeline's options. Nothing else calls this module.
"""

from __future__ import annotations

import json
import re
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

COMMAND = "python -m cluster.cli.config_reference > docs/configuration.md"

HEADER = f"""# Configuration reference

Every configuration class, field by field: its type (with its limits), its default and what it
means. Generated from the pydantic models by

    {COMMAND}

so edit the models (`Field(description=...)`), not this page: `tests/unit/test_config_reference.py`
fails when the two differ. Unknown keys are refused everywhere, with a message naming the field.
How the pieces are used:
[serving.md](serving.md) (the app config), [models.md](models.md) (the kinds),
[corpora.md](corpora.md) (the pipeline).
"""


def default_sections() -> list[tuple]:
    """The app config (`build_app(args)`, ray_config.yaml), the model spec (every kind, then each
    kind's own fields as the kinds registry declares them) and the pipeline's options."""
    from cluster.core.config import (
        AppConfig,
        Ensemble,
        EnsembleMember,
        IngressSettings,
        ModelSpec,
        Normalize,
        ReplicaSettings,
        ServedModel,
        Shaping,
        TokenizerSettings,
    )
    from cluster.data.pipeline import ScoringOptions
    from cluster.kinds import KINDS

    kinds = [
        (
            f"kind: {name}",
            kind.spec_fields,
            f"{kind.summary[0].upper()}{kind.summary[1:]}. Its own fields, beside those of [ModelSpec](#modelspec):",
        )
        for name, kind in KINDS.items()
    ]
    return [
        ("AppConfig", AppConfig),
        (
            "ServedModel",
            ServedModel,
            "One entry of `models` in the app config: a ModelSpec with its kind's fields "
            "(below), plus how to deploy it.",
        ),
        ("ModelSpec", ModelSpec),
        *kinds,
        ("ReplicaSettings", ReplicaSettings),
        ("Shaping", Shaping),
        ("Normalize", Normalize),
        ("Ensemble", Ensemble),
        ("EnsembleMember", EnsembleMember),
        ("TokenizerSettings", TokenizerSettings),
        ("IngressSettings", IngressSettings),
        ("ScoringOptions", ScoringOptions),
    ]


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def render(sections: Sequence[tuple] | None = None) -> str:
    """Markdown for the given (title, pydantic model) or (title, model, intro) sections, one each;
    the intro defaults to the model's own docstring. A field a model inherits unchanged from another
    listed model is named there, not repeated."""
    from pydantic import BaseModel

    sections = [
        (s[0], s[1], s[2] if len(s) > 2 else None) for s in (default_sections() if sections is None else sections)
    ]
    anchors = {model: slug(title) for title, model, _ in sections}
    listed = [model for _, model, _ in sections]
    out = [HEADER]
    for title, model, intro in sections:
        out.append(f"## {title}\n")
        intro = intro if intro is not None else model.__dict__.get("__doc__") or ""
        if intro.strip():
            out.append(f"{_escape(intro, table=False)}\n")
        rows, elsewhere = [], {}
        for name, field in model.model_fields.items():
            owner = _inherited_from(model, name, listed)
            if owner is not None:
                elsewhere.setdefault(owner, []).append(name)
                continue
            rows.append(
                f"| `{name}` | {_type_cell(field, anchors, BaseModel)} | {_default(field, BaseModel)} | "
                f"{_escape(field.description or '')} |"
            )
        for owner, names in elsewhere.items():
            out.append(
                f"Also every field of [{next(t for t, m, _ in sections if m is owner)}](#{anchors[owner]}) "
                f"({len(names)}: {', '.join(f'`{n}`' for n in names)}).\n"
            )
        if rows:
            out.append("| field | type | default | description |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(out).rstrip("\n") + "\n"


def _inherited_from(model: type, name: str, listed: list[type]) -> type | None:
    """Another listed model this one inherits field `name` from, unchanged."""
    for base in model.__mro__[1:]:
        if base in listed and name in getattr(base, "model_fields", {}):
            same = base.model_fields[name].annotation == model.model_fields[name].annotation
            return base if same else None
    return None


def _type_cell(field: Any, anchors: dict[type, str], base_model: type) -> str:
    text = _type(field.annotation, anchors, base_model)
    limits = _limits(field.metadata)
    return f"{text}{', ' + limits if limits else ''}"


def _type(tp: Any, anchors: dict[type, str], base_model: type) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is typing.Annotated:
        return _type(args[0], anchors, base_model)
    if origin is typing.Literal:
        return " \\| ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = list(dict.fromkeys(_type(a, anchors, base_model) for a in args))
        return " \\| ".join(parts)
    if origin in (list, tuple, dict):
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"list[{_type(args[0], anchors, base_model)}]"
        if origin is tuple:
            return f"[{', '.join(_type(a, anchors, base_model) for a in args)}]"
        inner = ", ".join(_type(a, anchors, base_model) for a in args)
        return f"{'list' if origin is list else 'mapping'}[{inner}]"
    if isinstance(tp, type) and issubclass(tp, base_model):
        # a model that is not a section itself (a kind's class in a union): its listed ancestor
        listed = next((m for m in tp.__mro__ if m in anchors), None)
        return f"[{listed.__name__}](#{anchors[listed]})" if listed else tp.__name__
    if isinstance(tp, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


LIMITS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _limits(metadata: list) -> str:
    said = []
    for m in metadata:
        for attr, sign in LIMITS.items():
            if getattr(m, attr, None) is not None:
                said.append(f"{sign} {getattr(m, attr)}")
        if getattr(m, "min_length", None) is not None:
            said.append(f"length >= {m.min_length}")
        if getattr(m, "max_length", None) is not None:
            said.append(f"length <= {m.max_length}")
        if getattr(m, "pattern", None) is not None:
            said.append(f"matching {_code(m.pattern)}")
    return ", ".join(said)


def _default(field: Any, base_model: type) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, base_model):
        return "its defaults"
    return _code(json.dumps(value, ensure_ascii=False))


def _code(text: str) -> str:
    """A code span in a table cell (GitHub reads `\\|` there as |)."""
    return "`" + text.replace("|", "\\|") + "`"


def _escape(text: str, table: bool = True) -> str:
    """One line; outside `code`, < and > as entities (not taken for HTML); in a table, | escaped."""
    pieces = " ".join(text.split()).split("`")
    text = "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(pieces))
    return text.replace("|", "\\|") if table else text


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
