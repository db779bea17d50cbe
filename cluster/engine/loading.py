"""load_model(spec): ModelSpec -> RewardModel | CriticModel | PrmModel | PointwiseModel, through the
real `from_pretrained`."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cluster.core.config import ModelSpec
from cluster.core.errors import ConfigError, ModelLoadError
from cluster.core.service import ScoringService
from cluster.engine.critic import CriticModel, CriticRunner
from cluster.engine.encoders import ChatEncoder, StepEncoder, load_tokenizer
from cluster.engine.generative import GenerativeModel, GenerativeRunner
from cluster.engine.local import LoadedModel, ThreadedBackend, ThreadedEncoder
from cluster.engine.placement import plan_placement, quantization_config
from cluster.engine.prm import PrmModel, StepRewardRunner
from cluster.engine.rating import PointwiseModel, RatingRunner
from cluster.engine.reward import LastTokenRunner, OwnForwardRunner, RewardHead, RewardModel, RewardRunner
from cluster.engine.weights import local_spec
from cluster.kinds import kind_of

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Soft-capped attention logits: SDPA would silently skip the capping (wrong scores).
NO_SDPA_MODEL_TYPES = {"gemma2"}
# Encoders whose transformers classes have no flash-attention-2 path
NO_FLASH_MODEL_TYPES = {"bert", "deberta-v2", "deberta", "electra", "roberta"}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but no CUDA device is visible; use device='cpu' or 'auto'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attn(requested: str, model_type: str, device: torch.device, dtype: torch.dtype) -> str | None:
    fa2_ok = device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and flash_attn_available()
    if requested == "auto":
        if fa2_ok and model_type not in NO_FLASH_MODEL_TYPES:
            return "flash_attention_2"
        # None: transformers' own choice, SDPA where the architecture supports it (DeBERTa-v2 does not)
        return "eager" if model_type in NO_SDPA_MODEL_TYPES else None
    if requested == "sdpa" and model_type in NO_SDPA_MODEL_TYPES:
        raise ConfigError(
            f"attn_implementation='sdpa' is wrong for {model_type} (attention soft-capping); "
            "use 'auto', 'eager' or 'flash_attention_2'"
        )
    if requested == "flash_attention_2" and not fa2_ok:
        raise ConfigError(
            "attn_implementation='flash_attention_2' needs a CUDA device, bf16/fp16 and the flash-attn "
            "package (pip install '.[gpu]'); use 'auto' to fall back"
        )
    return requested


HUB_PROBE_TIMEOUT_S = 3.0


def load_config(spec: ModelSpec, label: str | None = None):
    """The model's transformers config. Errors name the model as `label` (default: "model 'NAME'")
    and say what to do: a path that is not a model directory, one that does not exist, or a hub id
    while the hub cannot be reached (said at once, not after the hub client's retries)."""
    from transformers import AutoConfig

    label = label or f"model '{spec.name}'"
    spec = local_spec(spec, weights=False)
    if os.path.isdir(spec.path) and not os.path.isfile(os.path.join(spec.path, "config.json")):
        raise ModelLoadError(
            f"{label}: {spec.path!r} is not a model directory (no config.json); "
            "point it at a directory written by save_pretrained or at a hub id"
        )
    # a hub id is NAME or ORG/NAME: an absolute or relative path, or more slashes, is a missing directory
    if not os.path.isdir(spec.path) and (
        os.path.isabs(spec.path) or spec.path.startswith(".") or spec.path.count("/") > 1
    ):
        raise ModelLoadError(f"{label}: {spec.path!r} does not exist")
    local_only = False
    if not os.path.isdir(spec.path):
        local_only = _hub_offline(spec, label)
    try:
        return AutoConfig.from_pretrained(
            spec.path, revision=spec.revision, trust_remote_code=spec.trust_remote_code, local_files_only=local_only
        )
    except Exception as err:
        raise ModelLoadError(f"{label}: cannot load a model config from {spec.path!r}: {err}") from None


def _hub_offline(spec: ModelSpec, label: str) -> bool:
    """For a hub id: True to load from the local cache only (the hub is off by choice, or cannot be
    reached and the model is cached). Raises at once when the model is neither reachable nor cached,
    instead of the hub client's minute of retries."""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(spec.path, "config.json", revision=spec.revision), str)
    except Exception:  # not a valid repo id: let from_pretrained say what is wrong
        return False
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise ModelLoadError(
                f"{label}: {spec.path!r} is not a local directory and not in the Hugging Face cache, and "
                "HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to download it, or point at a local copy"
            )
        return True
    reason = _hub_unreachable()
    if reason is None:
        return False
    if cached:
        return True
    raise ModelLoadError(
        f"{label}: {spec.path!r} is not a local directory, and the Hugging Face hub ({constants.ENDPOINT}) cannot "
        f"be reached ({reason}); download it where the hub can be reached and point at that directory, or set "
        "HF_HUB_OFFLINE=1 to use only the local cache"
    )


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached within a few seconds (None: it answered)."""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return None


def is_causal(config) -> bool:
    archs = list(getattr(config, "architectures", None) or [])
    return bool(archs) and all(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)


def auto_class(spec: ModelSpec, config):
    """The Auto class the model's card loads it with."""
    import transformers

    head = kind_of(spec).head
    if head == "sequence":
        return transformers.AutoModelForSequenceClassification
    if head == "next_token" or is_causal(config):
        return transformers.AutoModelForCausalLM
    # a prm with a token-classification head: transformers' own class, or the remote code's own entry
    # (Qwen2.5-Math-PRM's auto_map names AutoModel, which its card calls)
    auto_map = getattr(config, "auto_map", None) or {}
    if spec.trust_remote_code and "AutoModelForTokenClassification" not in auto_map and "AutoModel" in auto_map:
        return transformers.AutoModel
    return transformers.AutoModelForTokenClassification


def load_model(spec: ModelSpec | dict[str, Any]):
    """Load the model `spec` describes (a ModelSpec or a dict of its fields): a RewardModel,
    CriticModel, PrmModel or PointwiseModel."""

    spec = local_spec(ModelSpec.parse(spec), weights=True)  # a URI path: this node's copy (engine/weights.py)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    config = load_config(spec)
    text_config = config.get_text_config()
    attn = resolve_attn(spec.attn_implementation, config.model_type, device, dtype)
    max_positions = getattr(text_config, "max_position_embeddings", None)
    if max_positions and spec.max_length > max_positions:
        raise ConfigError(
            f"model '{spec.name}': max_length={spec.max_length} exceeds the model's "
            f"max_position_embeddings={max_positions}"
        )
    check_head(spec, config)
    kind = kind_of(spec)
    head = reward_head(spec, config) if kind.head == "sequence" else None
    positive = prm_positive_label(spec, config) if kind.head == "steps" and not is_causal(config) else None

    tokenizer = load_tokenizer(spec)
    encoder = ChatEncoder.for_spec(spec, tokenizer)
    step_labels = prm_step_labels(spec, tokenizer) if kind.head == "steps" and is_causal(config) else None
    auto_cls = auto_class(spec, config)
    placement = weight_placement(spec, config, device, dtype)
    try:
        model = auto_cls.from_pretrained(
            spec.path,
            revision=spec.revision,
            dtype=dtype,
            attn_implementation=attn,
            trust_remote_code=spec.trust_remote_code,
            **placement,
        )
    except Exception as err:
        raise ModelLoadError(
            f"model '{spec.name}': cannot load {spec.path!r} as a {spec.kind} model ({auto_cls.__name__}): {err}"
        ) from None
    if not placement:
        model.to(device)
    model.eval()

    pad_id = _padding_id(tokenizer, text_config)
    runner_args = dict(
        name=spec.name,
        pad_id=pad_id,
        padding_side=spec.resolved_padding_side,
        max_batch_tokens=spec.max_batch_tokens,
        max_batch_size=spec.max_batch_size,
        share_prefixes=spec.share_prefixes,
    )
    parts = Loaded(
        spec, config, tokenizer, model, encoder, runner_args, head=head, positive=positive, step_labels=step_labels
    )
    return LOADERS[kind.name](parts)


@dataclass
class Loaded:
    """What every kind's model is built from: the spec, the checkpoint's config, tokenizer and
    weights, the encoder, the runner's common arguments, and what loading read for this kind."""

    spec: ModelSpec
    config: Any
    tokenizer: Any
    model: Any
    encoder: ChatEncoder
    runner_args: dict[str, Any]
    head: RewardHead | None = None
    positive: int | None = None
    step_labels: tuple[int, int] | None = None


def _reward_model(p: Loaded) -> RewardModel:
    return RewardModel(p.spec, p.encoder, reward_runner(p.spec, p.model, p.tokenizer, p.head, p.runner_args))


def _prm_model(p: Loaded) -> PrmModel:
    assert isinstance(p.encoder, StepEncoder)
    runner = StepRewardRunner(
        p.model,
        tag_id=p.encoder.tag_id,
        positive=p.positive,
        step_labels=p.step_labels,
        **(p.runner_args | {"padding_side": "right"}),
    )
    return PrmModel(p.spec, p.encoder, runner)


def _pointwise_model(p: Loaded) -> PointwiseModel:
    runner = RatingRunner(
        p.model,
        p.tokenizer,
        p.encoder.rating_tokens,
        p.spec.rating_strings,
        _eos_ids(p.model, p.tokenizer),
        p.spec.max_new_tokens,
        ratings_labels=p.spec.ratings,
        **p.runner_args,
    )
    runner.chat_max_length = p.spec.max_length
    runner.read_answers(verdict_pattern=p.spec.verdict_pattern, reasoning_end=p.spec.reasoning_end)
    return PointwiseModel(p.spec, p.encoder, runner)


def _critic_model(p: Loaded) -> CriticModel:
    runner = CriticRunner(
        p.model,
        p.tokenizer,
        p.encoder.verdict_tokens,
        p.spec.verdicts,
        _eos_ids(p.model, p.tokenizer),
        p.spec.max_new_tokens,
        **p.runner_args,
    )
    runner.chat_max_length = p.spec.max_length
    runner.read_answers(verdict_pattern=p.spec.verdict_pattern, reasoning_end=p.spec.reasoning_end)
    return CriticModel(p.spec, p.encoder, runner)


def _generative_model(p: Loaded) -> GenerativeModel:
    runner = GenerativeRunner(
        p.model, p.tokenizer, _eos_ids(p.model, p.tokenizer), p.spec.max_new_tokens, **p.runner_args
    )
    runner.chat_max_length = p.spec.max_length
    return GenerativeModel(p.spec, p.encoder, runner)


# each kind's loaded-model class and runner, by kind name (cluster/kinds)
LOADERS: dict[str, Callable[[Loaded], LoadedModel]] = {
    "reward": _reward_model,
    "critic": _critic_model,
    "prm": _prm_model,
    "pointwise": _pointwise_model,
    "generative": _generative_model,
}


def weight_placement(spec: ModelSpec, config, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """from_pretrained arguments that place the weights: nothing (one device, moved after loading),
    a balanced layer map over `spec.devices` GPUs, and/or a quantization config."""
    if spec.devices == 1 and spec.quantization is None:
        return {}

    quantization = quantization_config(spec.quantization, device.type)
    if spec.devices == 1:
        return {"device_map": {"": device.index or 0}, "quantization_config": quantization}
    if device.type != "cuda" or torch.cuda.device_count() < spec.devices:
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ConfigError(
            f"model '{spec.name}': devices={spec.devices} but {visible} CUDA device(s) are visible here; "
            "serve it with replicas.num_gpus >= devices so Ray gives the replica that many GPUs"
        )
    device_map = plan_placement(
        config, placement_kind(spec, config), spec.devices, dtype, quantization=spec.quantization
    )
    return {"device_map": device_map, "quantization_config": quantization}


def placement_kind(spec: ModelSpec, config) -> str:
    """The skeleton the placement planner builds: a causal LM, or a classifier (a prm's token
    classifier has a sequence classifier's layers and a head as small)."""
    head = kind_of(spec).head
    return "reward" if head == "sequence" or (head == "steps" and not is_causal(config)) else "critic"


def prm_positive_label(spec: ModelSpec, config) -> int:
    """A token-classifier prm's positive label: reward_label (index or name), else label 1 of two
    (Qwen2.5-Math-PRM's card reads `[:, 1]`)."""
    n = int(getattr(config, "num_labels", 2))
    id2label = getattr(config, "id2label", None) or {}
    labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(n)]
    if spec.reward_label is None:
        if n != 2:
            raise ConfigError(
                f"model '{spec.name}': a prm with {n} labels {labels}; name its positive label with reward_label"
            )
        return 1
    index = labels.index(spec.reward_label) if spec.reward_label in labels else spec.reward_label
    if not isinstance(index, int) or not 0 <= index < n:
        raise ConfigError(
            f"model '{spec.name}': reward_label={spec.reward_label!r} is not one of its {n} labels "
            f"{labels} (or an index below {n})"
        )
    return index


def prm_step_labels(spec: ModelSpec, tokenizer) -> tuple[int, int]:
    """A causal-LM prm's (good, bad) token ids. Two strings are tokenized as the Math-Shepherd card
    does (`tokenizer.encode(f"{good} {bad}")[1:]`, i.e. together, without special tokens); ids are
    taken as given. Default: Math-Shepherd's '+' and '-'."""
    good, bad = spec.step_labels or ("+", "-")
    where = f"model '{spec.name}': step_labels"
    if isinstance(good, str) and isinstance(bad, str):
        ids = tokenizer(f"{good} {bad}", add_special_tokens=False)["input_ids"]
        if len(ids) != 2:
            raise ConfigError(
                f"{where} {[good, bad]!r} tokenize as {len(ids)} tokens together ({ids}), not one each; "
                "give the two token ids instead"
            )
        return ids[0], ids[1]
    out = []
    for label in (good, bad):
        if isinstance(label, int):
            if not 0 <= label < len(tokenizer):
                raise ConfigError(f"{where}: token id {label} is outside the vocabulary (0..{len(tokenizer) - 1})")
            out.append(label)
            continue
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(f"{where}: {label!r} is {len(ids)} tokens; give its token id instead")
        out.append(ids[0])
    return out[0], out[1]


def check_head(spec: ModelSpec, config) -> None:
    """A checkpoint of the other kind would load with a freshly initialised head and score noise,
    silently: refuse it by its declared architecture."""
    archs = list(getattr(config, "architectures", None) or [])
    causal = is_causal(config)
    classifier = bool(archs) and all(a.endswith("ForSequenceClassification") for a in archs)
    head = kind_of(spec).head
    if head == "sequence" and causal:
        raise ModelLoadError(
            f"model '{spec.name}': {spec.path!r} is a causal LM checkpoint ({', '.join(archs)}) with no reward "
            "head; a reward model has one (a *ForSequenceClassification checkpoint). Use kind='critic' for a judge"
        )
    if head == "next_token" and classifier:
        raise ModelLoadError(
            f"model '{spec.name}': {spec.path!r} is a sequence classifier ({', '.join(archs)}), not a causal LM; "
            "use kind='reward'"
        )
    if head == "steps" and classifier:
        raise ModelLoadError(
            f"model '{spec.name}': {spec.path!r} is a sequence classifier ({', '.join(archs)}): one score per "
            "sequence, not per step; use kind='reward'"
        )


def reward_head(spec: ModelSpec, config) -> RewardHead:
    """The scalar reward a reward model's output vector gives: its one label, or the label /
    weighted sum the spec names. Several labels and no choice is an error, never a guess."""
    n = int(getattr(config, "num_labels", 1))
    id2label = getattr(config, "id2label", None) or {}
    labels = tuple(str(id2label.get(i, f"LABEL_{i}")) for i in range(n))
    where = f"model '{spec.name}'"
    if spec.reward_weights is not None:
        weights = spec.reward_weights
        if isinstance(weights, dict):
            unknown = sorted(set(weights) - set(labels))
            if unknown:
                raise ConfigError(f"{where}: reward_weights names unknown label(s) {unknown}; labels: {list(labels)}")
            weights = [float(weights.get(label, 0.0)) for label in labels]
        if len(weights) != n:
            raise ConfigError(f"{where}: reward_weights has {len(weights)} values for {n} output labels {list(labels)}")
        return RewardHead(labels, None, tuple(weights))
    if spec.reward_label is not None:
        index = labels.index(spec.reward_label) if spec.reward_label in labels else spec.reward_label
        if not isinstance(index, int) or not 0 <= index < n:
            raise ConfigError(
                f"{where}: reward_label={spec.reward_label!r} is not one of its {n} labels "
                f"{list(labels)} (or an index below {n})"
            )
        return RewardHead(labels, index)
    if n != 1:
        raise ConfigError(
            f"{where}: {spec.path!r} has {n} output labels {list(labels)}; choose the scalar reward with "
            "reward_label (an index or label name) or reward_weights (a weight per label)"
        )
    return RewardHead(labels, 0)


def reward_runner(spec: ModelSpec, model, tokenizer, head: RewardHead, runner_args: dict[str, Any]) -> RewardRunner:
    """The last-token fast path for transformers' own decoder classifiers; the model's own forward
    (right padding) for encoders and custom heads, whose pooling we must not second-guess."""
    if reads_last_token(model):
        return LastTokenRunner(model, head=head, **runner_args)
    if spec.padding_side == "left":
        raise ConfigError(
            f"model '{spec.name}': {type(model).__name__} pools through its own forward, which is only "
            "position-exact with right padding; use padding_side 'auto' or 'right'"
        )
    text_config = model.config.get_text_config()
    config_pad = getattr(text_config, "pad_token_id", None)
    args = {**runner_args, "padding_side": "right"}
    if config_pad is not None:
        args["pad_id"] = int(config_pad)  # HF's own pooling finds the last real token by this id
    else:
        args["max_batch_size"] = 1  # with no pad id HF's forward cannot tell padding from tokens
    token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    return OwnForwardRunner(model, head=head, token_types=token_types, **args)


# transformers' decoder classifiers outside GenericForSequenceClassification whose forward pools
# the last non-pad token through `.score` exactly as the generic one does (read, not assumed)
LAST_TOKEN_CLASSIFIERS = {"GPTNeoXForSequenceClassification"}


def reads_last_token(model) -> bool:
    from transformers.modeling_layers import GenericForSequenceClassification

    cls = type(model)
    if not cls.__module__.startswith("transformers."):
        return False  # remote code: its forward may pool or post-process anything
    if isinstance(model, GenericForSequenceClassification):
        return cls.forward is GenericForSequenceClassification.forward
    return cls.__name__ in LAST_TOKEN_CLASSIFIERS


def _padding_id(tokenizer, text_config) -> int:
    """Any id works for padding (masked, and we pick the read position ourselves); prefer the
    declared pad token."""
    for candidate in (tokenizer.pad_token_id, getattr(text_config, "pad_token_id", None), tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _eos_ids(model, tokenizer) -> list[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return []
    return [int(i) for i in (ids if isinstance(ids, list | tuple) else [ids])]


def local_service(config) -> Any:
    """Every model of an AppConfig loaded in this process, behind the request core: the Serve
    app's logic with no Ray (`create_app(local_service(config))`: the tests' app, a local app).
    Tokenization and forward passes run in worker threads (forward passes one at a time), so the
    event loop keeps answering /healthz and taking requests meanwhile."""

    loaded = {m.name: load_model(m.spec()) for m in config.models}
    return ScoringService(
        config.models,
        ThreadedEncoder({n: m.encoder for n, m in loaded.items()}),
        ThreadedBackend({n: m.runner for n, m in loaded.items()}),
        ensembles=config.ensembles,
        max_items=config.max_items_per_request,
    )
