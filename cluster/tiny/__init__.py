"""Tiny, seeded models in the real families' formats, saved with save_pretrained (no model hub here,
so tests, the demo and the benchmarks build their own).

- `families.py`: a byte-level BPE and a 2-layer model of each family's own config class (Llama-3.x,
  Gemma-2, Qwen2, Qwen3, Mistral, SmolLM, GPT-NeoX, BERT, DeBERTa-v2) for every kind, the demo's
  models, and a custom-head reward model loaded as remote code;
- `prm.py`: process reward models (Qwen2.5-Math-PRM's remote-code token classifier, Math-Shepherd's
  causal LM).
"""

from cluster.tiny.families import (
    ARCHES,
    DEMO_CONVERSATIONS,
    DEMO_PAIR,
    FAMILIES,
    HELPSTEER2_LABELS,
    SAMPLE_TEXT,
    build_config,
    build_custom_head_model,
    build_demo_models,
    build_tiny_model,
    build_tokenizer,
    chat_template,
    teach_rating_format,
    teach_verdict_format,
)
from cluster.tiny.prm import QWEN_PRM_STEP_TOKEN, SHEPHERD_BAD, SHEPHERD_GOOD, SHEPHERD_STEP_TAG, build_tiny_prm

__all__ = [
    "ARCHES",
    "DEMO_CONVERSATIONS",
    "DEMO_PAIR",
    "FAMILIES",
    "HELPSTEER2_LABELS",
    "QWEN_PRM_STEP_TOKEN",
    "SAMPLE_TEXT",
    "SHEPHERD_BAD",
    "SHEPHERD_GOOD",
    "SHEPHERD_STEP_TAG",
    "build_config",
    "build_custom_head_model",
    "build_demo_models",
    "build_tiny_model",
    "build_tiny_prm",
    "build_tokenizer",
    "chat_template",
    "teach_rating_format",
    "teach_verdict_format",
]
