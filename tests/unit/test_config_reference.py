"""docs/configuration.md is the configuration reference generated from the pydantic models
(cluster/cli/config_reference.py): it must be what the generator renders today, and the generator
must cover every field a config may set. No Ray."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from helpers import REPO
from pydantic import BaseModel, Field

from cluster.cli.config_reference import COMMAND, default_sections, render

ROOT = REPO
DOC = ROOT / "docs" / "configuration.md"


def test_docs_configuration_md_is_the_generated_reference():
    assert DOC.read_text() == render(), f"docs/configuration.md is out of date; regenerate it: {COMMAND}"


def test_every_field_a_config_may_set_is_documented():
    """Every served kind's class (the app config's `models` union), the app config, the pipeline's
    options: each field has a row (or is named as inherited from a section that has it)."""
    from cluster.core.config import AppConfig
    from cluster.data.pipeline import ScoringOptions

    text = render()
    classes = [AppConfig, ScoringOptions, *models_in(AppConfig.model_fields["models"].annotation)]
    assert len(classes) > 3  # the served kinds were found in the union
    missing = [f"{c.__name__}.{name}" for c in classes for name in c.model_fields if f"`{name}`" not in text]
    assert missing == [], f"fields missing from the reference: {missing}; add their class to default_sections()"
    assert len(default_sections()) == len({model for _, model, *_ in default_sections()})


def models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation names (through lists, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in models_in(arg)]


class Inner(BaseModel):
    """Something nested."""

    size: int = Field(3, ge=1, description="how big | how many")


class Outer(BaseModel):
    name: str
    mode: Literal["a", "b"] = "a"
    inner: Inner = Inner()
    items: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, description="<names>, `<kept>`")


class Child(Outer):
    extra: float | None = None


def test_the_generator_walks_any_models_it_is_given():
    """Any (title, model) list: nested models linked to their section, defaults, limits, escaping;
    an inherited field named once, in the section of the listed model that has it."""
    text = render([("Outer", Outer), ("Child", Child), ("Inner", Inner, "Intro given.")])
    assert "| `name` | string | required |  |" in text
    assert '| `mode` | `"a"` \\| `"b"` | `"a"` |  |' in text
    assert "| `inner` | [Inner](#inner) | its defaults |  |" in text
    assert "| `items` | list[string] | `[]` | &lt;names&gt;, `<kept>` |" in text
    assert "| `size` | integer, >= 1 | `3` | how big \\| how many |" in text
    assert "Also every field of [Outer](#outer) (4: `name`, `mode`, `inner`, `items`)." in text
    assert "| `extra` | number \\| null | `null` |  |" in text
    assert text.count("| `mode` |") == 1
    assert "## Inner\n\nIntro given.\n" in text and "Something nested" not in text
