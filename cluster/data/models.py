"""The model a run scores with: a spec, its fields, a model path or a served model's name, resolved to
a ModelSpec and checked in the driver before any actor starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from cluster.core.config import ModelSpec, deployment_name
from cluster.core.errors import ConfigError, ModelLoadError
from cluster.kinds import NAMES, kind_of


def resolve_model(model: ModelSpec | Mapping[str, Any] | str, via_serve: str | None = None) -> ModelSpec:
    """A ModelSpec, its fields, a model directory / hub id (kind read from its config: a reward
    model or a critic; a process reward model or pointwise judge needs a spec), or with via_serve
    the name of a model the Serve app serves (its spec then comes from the replica)."""
    if via_serve is not None:
        name = model.name if isinstance(model, ModelSpec) else model["name"] if isinstance(model, Mapping) else model
        spec = served_model(via_serve, name)[0]
        _check_scores_corpora(spec)
        return spec
    if isinstance(model, ModelSpec):
        spec = model
    elif isinstance(model, Mapping):
        spec = ModelSpec.parse(dict(model))
    elif isinstance(model, str | os.PathLike):
        spec = ModelSpec(name=_name_from_path(str(model)), path=str(model), kind=_kind_from_config(str(model)))
    else:
        raise ConfigError(f"model: expected a ModelSpec, its fields or a model path, got {type(model).__name__}")
    _check_scores_corpora(spec)
    _check_model(spec)
    return spec


def _check_scores_corpora(spec: ModelSpec) -> None:
    kind = kind_of(spec)
    if kind.unit == "chat":
        raise ConfigError(
            f"model '{spec.name}' is {kind.title}: it answers chat completions, and its verdicts are its "
            "client's to read; a corpus is scored by a reward model, prm, critic or pointwise judge (a critic "
            "or pointwise judge with verdict_pattern reads a reasoning judge's verdicts)"
        )


def _name_from_path(path: str) -> str:
    base = os.path.basename(os.path.normpath(path)) or "model"
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).lstrip("._-")
    return cleaned or "model"


def _kind_from_config(path: str) -> str:
    from cluster.engine.loading import is_causal, load_config

    config = load_config(ModelSpec(name=_name_from_path(path), path=path, kind="reward"), label="model")
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "reward"
    if is_causal(config):  # the one reading of "causal" (engine/loading.py): every architecture is
        return "critic"
    if any(a.endswith(("ForTokenClassification", "ForProcessRewardModel")) for a in archs):
        raise ModelLoadError(
            f"{path!r}: its config (architectures={archs}) reads a value per token: a process reward model? "
            "A path alone cannot say where its steps are read; pass a ModelSpec with kind='prm' and its step_tag "
            '(e.g. {"kind": "prm", "step_tag": "<extra_0>"} for Qwen2.5-Math-PRM)'
        )
    raise ModelLoadError(
        f"{path!r}: cannot tell from its config (architectures={archs}) whether it is a reward "
        "model or a critic; pass a ModelSpec with kind='reward' or 'critic' (a process reward "
        "model or a pointwise judge always needs a spec: kind='prm' or 'pointwise')"
    )


def _check_model(spec: ModelSpec) -> None:
    """Fail in the driver, naming the path, before any actor starts: config and tokenizer load."""
    from cluster.engine.encoders import ChatEncoder
    from cluster.engine.loading import (
        check_head,
        is_causal,
        load_config,
        prm_positive_label,
        prm_step_labels,
        reward_head,
    )

    config = load_config(spec)
    check_head(spec, config)
    head = kind_of(spec).head
    if head == "sequence":
        reward_head(spec, config)  # several output labels and no scalar chosen: say so now
    encoder = ChatEncoder.for_spec(spec)  # a prm: its step tag; a pointwise judge: its rating tokens
    if head == "steps" and is_causal(config):  # the (good, bad) tokens its step reward reads
        prm_step_labels(spec, encoder.tokenizer)
    elif head == "steps":  # the label its step reward reads
        prm_positive_label(spec, config)


def served_model(app_name: str, model_name: str) -> tuple[ModelSpec, str, int]:
    """(spec, deployment name, per-call token limit) of a model the running Serve app serves."""
    from ray import serve

    try:
        app = serve.status().applications.get(app_name)
    except Exception as err:
        raise ConfigError(f"via_serve={app_name!r}: cannot reach Ray Serve ({err})") from None
    if app is None:
        raise ConfigError(f"via_serve={app_name!r}: no such Serve application is running")
    for kind in NAMES:
        name = deployment_name(kind, model_name)
        if name in app.deployments:
            info = serve.get_deployment_handle(name, app_name=app_name).describe.remote().result()
            return ModelSpec(**info["spec"]), name, int(info["batch_max_tokens"])
    raise ConfigError(
        f"via_serve={app_name!r}: the app serves no model named {model_name!r} (deployments: {sorted(app.deployments)})"
    )


def output_labels(spec: ModelSpec, via_serve: str | None) -> list[str]:
    """A reward model's output labels (one for a plain reward model); [] for a critic."""
    if kind_of(spec).head != "sequence":
        return []
    if via_serve is not None:
        from ray import serve

        handle = serve.get_deployment_handle(deployment_name("reward", spec.name), app_name=via_serve)
        return list(handle.describe.remote().result()["labels"])
    from cluster.engine.loading import load_config, reward_head

    return list(reward_head(spec, load_config(spec)).labels)
