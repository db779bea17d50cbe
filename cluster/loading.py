"""load_model(spec): ModelSpec -> RewardModel | CriticModel, through the real `from_pretrained`."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from cluster.config import ModelSpec
from cluster.critic import CriticModel, CriticRunner
from cluster.errors import ConfigError, ModelLoadError
from cluster.reward import RewardModel, RewardRunner
from cluster.tokenization import ChatEncoder, load_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Soft-capped attention logits: SDPA would silently skip the capping (wrong scores).
NO_SDPA_MODEL_TYPES = {"gemma2"}


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


def resolve_attn(requested: str, model_type: str, device: torch.device, dtype: torch.dtype) -> str:
    fa2_ok = device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and flash_attn_available()
    if requested == "auto":
        if fa2_ok:
            return "flash_attention_2"
        return "eager" if model_type in NO_SDPA_MODEL_TYPES else "sdpa"
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


def load_config(spec: ModelSpec):
    from transformers import AutoConfig

    if os.path.isdir(spec.path) and not os.path.isfile(os.path.join(spec.path, "config.json")):
        raise ModelLoadError(
            f"model '{spec.name}': {spec.path!r} is not a model directory (no config.json); "
            "point path at a directory written by save_pretrained or at a hub id"
        )
    if not os.path.isdir(spec.path) and (os.path.isabs(spec.path) or spec.path.startswith(".")):
        raise ModelLoadError(f"model '{spec.name}': {spec.path!r} does not exist")
    try:
        return AutoConfig.from_pretrained(spec.path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except Exception as err:
        raise ModelLoadError(f"model '{spec.name}': cannot load a model config from {spec.path!r}: {err}") from None


def load_model(spec: ModelSpec | dict[str, Any]) -> RewardModel | CriticModel:
    """Load a reward model or critic described by `spec` (a ModelSpec or a dict of its fields)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    spec = ModelSpec.parse(spec)
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
    if spec.kind == "reward" and getattr(config, "num_labels", 1) != 1:
        raise ModelLoadError(
            f"model '{spec.name}': a reward model has one output label; {spec.path!r} has {config.num_labels}"
        )

    tokenizer = load_tokenizer(spec)
    encoder = ChatEncoder.for_spec(spec, tokenizer)
    auto_cls = AutoModelForSequenceClassification if spec.kind == "reward" else AutoModelForCausalLM
    try:
        model = auto_cls.from_pretrained(
            spec.path, revision=spec.revision, dtype=dtype, attn_implementation=attn,
            trust_remote_code=spec.trust_remote_code,
        )
    except Exception as err:
        raise ModelLoadError(
            f"model '{spec.name}': cannot load {spec.path!r} as a {spec.kind} model "
            f"({auto_cls.__name__}): {err}"
        ) from None
    model.to(device).eval()

    pad_id = _padding_id(tokenizer, text_config)
    runner_args = dict(name=spec.name, pad_id=pad_id, padding_side=spec.resolved_padding_side,
                       max_batch_tokens=spec.max_batch_tokens, max_batch_size=spec.max_batch_size)
    if spec.kind == "reward":
        if not hasattr(model, "score"):
            raise ModelLoadError(f"model '{spec.name}': {type(model).__name__} has no score head")
        return RewardModel(spec, encoder, RewardRunner(model, **runner_args))
    eos_ids = _eos_ids(model, tokenizer)
    runner = CriticRunner(model, tokenizer, encoder.verdict_tokens, spec.verdicts, eos_ids, **runner_args)
    return CriticModel(spec, encoder, runner)


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
