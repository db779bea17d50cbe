"""The seed models as `python -m cluster gpu-check` builds them: their architectures from their
config.json files (written here, since the GPU machine reaches no hub), their served settings from
ray_config.all-seed-models.yaml, and the token lengths they are measured at (RM-Bench's, and the
GRPO shape). No tokenizer travels either, so items are random token ids of those lengths.

Where each config was read (the `search` tool's stored copies of the hub pages):
- Skywork-Reward-Llama-3.1-8B: huggingface.co/Skywork/Skywork-Reward-Llama-3.1-8B/raw/main/config.json
  (v0.1; v0.2 is the same architecture trained on the decontaminated Preference-80K-v0.2, as the
  Skywork-Reward collection's note says). A pad token added after Llama-3's vocabulary: 128256 of 128257.
- Skywork-Critic-Llama-3.1-8B and -70B: fine-tunes of Llama-3.1-8B/70B-Instruct, whose shapes these
  are (the 70B: the config of a meta-llama/Meta-Llama-3.1-70B-Instruct snapshot, as
  mlabonne/Llama-3.1-70B-Instruct-lorablated ships it; the 8B: the 8B Llama-3.1 shape above, without
  the added pad token). tests/unit/test_placement.py plans the same shapes.
- Skywork-Reward-V2-Qwen3-8B: Qwen/Qwen3-8B's config.json (as copied in
  thejaminator/qwen-hook-layer-9, "Copy config.json from Qwen/Qwen3-8B") as a one-label
  Qwen3ForSequenceClassification; the pad id is Qwen3's `<|endoftext|>` (151643).
- Skywork-Reward-Gemma-2-27B: huggingface.co/Skywork/Skywork-Reward-Gemma-2-27B config.json at commit
  776a27d (v0.1; v0.2 has the same architecture, like the Llama pair).
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SEED_APP = REPO / "ray_config.all-seed-models.yaml"

_LLAMA_3_1 = {
    "model_type": "llama",
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "vocab_size": 128256,
}
_LLAMA_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}

# hub id -> config.json (the architecture's fields; see the module docstring for the sources)
SEED_CONFIGS: dict[str, dict[str, Any]] = {
    "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2": {
        **_LLAMA_3_1,
        **_LLAMA_8B,
        "architectures": ["LlamaForSequenceClassification"],
        "num_labels": 1,
        "pad_token_id": 128256,
        "vocab_size": 128257,
    },
    "Skywork/Skywork-Critic-Llama-3.1-8B": {**_LLAMA_3_1, **_LLAMA_8B, "architectures": ["LlamaForCausalLM"]},
    "Skywork/Skywork-Reward-V2-Qwen3-8B": {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForSequenceClassification"],
        "num_labels": 1,
        "hidden_act": "silu",
        "attention_bias": False,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
        "vocab_size": 151936,
    },
    "Skywork/Skywork-Reward-Gemma-2-27B-v0.2": {
        "model_type": "gemma2",
        "architectures": ["Gemma2ForSequenceClassification"],
        "num_labels": 1,
        "attention_bias": False,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "head_dim": 128,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 4608,
        "intermediate_size": 36864,
        "max_position_embeddings": 8192,
        "num_attention_heads": 32,
        "num_hidden_layers": 46,
        "num_key_value_heads": 16,
        "query_pre_attn_scalar": 144,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "vocab_size": 256000,
    },
    "Skywork/Skywork-Critic-Llama-3.1-70B": {
        **_LLAMA_3_1,
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
    },
}
# the models the check builds (one at a time, largest last); the 70B critic is only planned
MEASURED = (
    "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2",
    "Skywork/Skywork-Reward-V2-Qwen3-8B",
    "Skywork/Skywork-Critic-Llama-3.1-8B",
    "Skywork/Skywork-Reward-Gemma-2-27B-v0.2",
)
PLANNED = "Skywork/Skywork-Critic-Llama-3.1-70B"

# --smoke: the same architectures with these of their fields, small enough for a CPU (Llama derives
# its head_dim: 64 / 4); vocabularies, special ids, soft-capping and rope stay the seeds' own
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
}
# random token ids come from here: clear of every seed's special and added tokens (Llama-3's from
# 128000, Qwen3's from 151643, Gemma-2's control tokens below 1000)
TOKEN_RANGE = (1000, 100000)


def config_of(path: str, *, tiny: bool = False, layers: int | None = None):
    """The seed's transformers config, optionally shrunk (`tiny`) or cut to its first `layers`."""
    from transformers import AutoConfig

    fields = dict(SEED_CONFIGS[path])
    model_type = fields.pop("model_type")
    if tiny:
        fields.update({k: v for k, v in TINY.items() if k in fields})
    if layers is not None:
        fields["num_hidden_layers"] = layers
    return AutoConfig.for_model(model_type, **fields)


def served_specs() -> dict[str, Any]:
    """hub id -> the ModelSpec the seed app serves it with (ray_config.all-seed-models.yaml)."""
    import yaml

    from cluster.core.config import AppConfig

    raw = yaml.safe_load(SEED_APP.read_text("utf-8"))
    [app] = raw["applications"]
    return {m.spec().path: m.spec() for m in AppConfig.parse(app["args"]).models}


# ---------------------------------------------------------------- lengths

RM_BENCH = Path("../shared/data/rm-bench")
# Llama-3's pre-tokenizer split (Python's re has no \p{L}: [^\W\d] is a letter). BPE then splits about
# one piece in ten again, hence PIECES_PER_TOKEN; with the template's tokens this gives RM-Bench
# median 345, p90 665, max 1,630 tokens, where ../shared/data/README.md reports tokenized lengths of
# 350, 665 and 1,757.
_PIECES = re.compile(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\w]?[^\W\d]+|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+")
TOKENS_PER_PIECE = 1.1
TEMPLATE_TOKENS = 11  # BOS + two Llama-3 headers and end-of-turn markers
# RM-Bench's 4,788 (prompt, response) pairs, estimated as above: the 0%, 5%, ..., 100% quantiles.
# Sampled from (inverse CDF, linear between quantiles) where ../shared is absent, as on the GPU machine.
RM_BENCH_QUANTILES = (
    21, 34, 42, 58, 72, 87, 105, 158, 257, 306, 345, 377, 415, 454, 488, 520, 557, 607, 665, 757, 1630,
)  # fmt: skip


def estimated_tokens(prompt: str, response: str) -> int:
    return round(TOKENS_PER_PIECE * (len(_PIECES.findall(prompt)) + len(_PIECES.findall(response)))) + TEMPLATE_TOKENS


def rm_bench_pairs(folder: Path) -> list[tuple[str, str]]:
    records = [r for path in sorted(folder.glob("*.json")) for r in json.loads(path.read_text("utf-8"))]
    return [(r["prompt"], response) for r in records for response in [*r["chosen"], *r["rejected"]]]


def quantiles(lengths: list[int], steps: int = 20) -> tuple[int, ...]:
    ordered = sorted(lengths)
    return tuple(ordered[round(k * (len(ordered) - 1) / steps)] for k in range(steps + 1))


def rm_bench_lengths(items: int, rng: random.Random, folder: Path = RM_BENCH) -> tuple[list[int], str]:
    """`items` token lengths with RM-Bench's distribution, and where they came from."""
    if folder.is_dir() and (pairs := rm_bench_pairs(folder)):
        sample = rng.sample(pairs, min(items, len(pairs)))
        return [estimated_tokens(p, r) for p, r in sample], f"RM-Bench pairs from {folder} (tokens estimated)"
    steps = len(RM_BENCH_QUANTILES) - 1
    lengths = []
    for _ in range(items):
        at = rng.random() * steps
        low = int(at)
        high = min(low + 1, steps)
        lo, hi = RM_BENCH_QUANTILES[low], RM_BENCH_QUANTILES[high]
        lengths.append(round(lo + (hi - lo) * (at - low)))
    return lengths, "sampled from RM-Bench's length quantiles (no ../shared/data/rm-bench here)"


@dataclass(frozen=True)
class GrpoShape:
    """n responses to each prompt, as a GRPO step scores them; the prompt is the shared prefix."""

    prompts: int
    n: int = 8
    prompt_tokens: int = 1500
    response_median: int = 512
    response_sigma: float = 0.35

    def describe(self) -> str:
        return (
            f"{self.prompts} prompt(s) of ~{self.prompt_tokens} tokens x {self.n} responses "
            f"(median {self.response_median} tokens)"
        )


def random_ids(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(*TOKEN_RANGE) for _ in range(length)]


def grpo_items(shape: GrpoShape, rng: random.Random) -> list[list[int]]:
    """Each group's prompt ids followed by each response's, groups in order."""
    items = []
    for _ in range(shape.prompts):
        prompt = random_ids(rng, round(shape.prompt_tokens * rng.uniform(0.9, 1.1)))
        for _ in range(shape.n):
            response = max(8, round(rng.lognormvariate(math.log(shape.response_median), shape.response_sigma)))
            items.append(prompt + random_ids(rng, response))
    return items
