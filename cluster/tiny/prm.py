"""Tiny process reward models (Qwen2.5-Math-PRM's remote-code token classifier, Math-Shepherd's causal LM),
built on the families' tokenizers and configs (cluster/tiny/families.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from cluster.tiny.families import SAMPLE_TEXT, build_config, build_tokenizer

PRM_TEXT = [
    "Step 1: Janet's ducks lay 16 eggs per day. Step 2: She eats 3, so 16 - 3 = 13 eggs are left.",
    "Step 3: She sells the remainder for $2 each, so she makes 9 * 2 = 18 dollars. The answer is: 18",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "To find the sum, we add 2 + 3 = 5. Then 5 - 1 = 4, and 4 * 2 = 8. So the answer is \\boxed{8}.",
]
PRM_LOGIT_SPREAD = 1.5  # std of the tiny PRMs' step logit (positive minus negative) over PRM_TEXT's steps
QWEN_PRM_STEP_TOKEN = "<extra_0>"  # Qwen2.5-Math-PRM: after each step; reward = P(positive) there
SHEPHERD_STEP_TAG, SHEPHERD_GOOD, SHEPHERD_BAD = "ки", "+", "-"  # math-shepherd's card

# Qwen/Qwen2.5-Math-PRM-7B ships its config class and model as remote code; config.json has
# "architectures": ["Qwen2ForProcessRewardModel"], "model_type": "qwen2" and
# "auto_map": {"AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
#              "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
# (https://huggingface.co/Qwen/Qwen2.5-Math-PRM-7B/blob/main/config.json). The real
# configuration_qwen2_rm.py is a copy of Qwen2Config with model_type "qwen2"; here a subclass.
QWEN_PRM_CONFIG_SOURCE = """
from transformers import Qwen2Config


class Qwen2RMConfig(Qwen2Config):
    model_type = "qwen2"
"""

# modeling_qwen2_rm.py, mirrored in its shape: Qwen2Model, then score = Linear(h, h) -> ReLU ->
# Linear(h, num_labels=2) applied to every position; forward returns logits [batch, seq, 2] as
# `[0]` / `.logits`. The real file was not readable here; this follows its description in the
# card, vLLM's port of it (Qwen2ForProcessRewardModel: score = Linear, ReLU, Linear(h, 2)) and a
# public copy of the file (hengzzzhou/ReSo, model/modeling_qwen2_rm.py: TokenClassifierOutput).
QWEN_PRM_MODEL_SOURCE = """
from typing import Optional, Union

import torch
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers import Qwen2Model, Qwen2PreTrainedModel
from transformers.modeling_outputs import TokenClassifierOutput

from .configuration_qwen2_rm import Qwen2RMConfig


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    config_class = Qwen2RMConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Qwen2Model(config)
        self.score = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.ReLU(),
            nn.Linear(config.hidden_size, self.num_labels),
        )
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values=None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[tuple, TokenClassifierOutput]:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = outputs[0]
        logits = self.score(hidden_states)  # [batch, seq, num_labels]: every position

        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))

        if not return_dict:
            output = (logits,) + tuple(outputs[2:])
            return ((loss,) + output) if loss is not None else output
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
"""


def build_tiny_prm(
    out: str | Path, *, style: Literal["qwen", "shepherd"], seed: int = 0, vocab_size: int = 512
) -> Path:
    """A seeded tiny process reward model in a real PRM's format, written to `out`.

    style "qwen" (Qwen/Qwen2.5-Math-PRM-7B): a Qwen2 tokenizer with `<extra_0>` as an added special
    token and the ChatML template; remote code (configuration_qwen2_rm.py, modeling_qwen2_rm.py)
    loaded with AutoModel and trust_remote_code; logits [batch, seq, 2] at every position.
    style "shepherd" (peiyi9979/math-shepherd-mistral-7b-prm): a Mistral tokenizer in which the
    step tag 'ки' is one (added, non-special) token and '+' / '-' are the card's two candidate
    tokens; a MistralForCausalLM whose next-token logits for those two at the tag are the reward.
    Both have their score heads scaled up so step rewards spread out over (0, 1)."""
    import torch

    if style not in ("qwen", "shepherd"):
        raise ValueError(f"style must be 'qwen' or 'shepherd', got {style!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if style == "qwen":
        return _build_qwen_prm(out, seed=seed, vocab_size=vocab_size)

    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer("mistral", corpus=PRM_TEXT, vocab_size=vocab_size)
    # In the real (sentencepiece) vocabulary the tag is '▁ки' (id 12902), one token both for the
    # card's encode("ки") and inside "... ки\n". A byte-level BPE would split it into bytes, so it is
    # an added token here; the space before it stays its own token ('Ġ'), so text round-trips.
    tokenizer.add_tokens([AddedToken(SHEPHERD_STEP_TAG, special=False, normalized=False)])
    tag_id = tokenizer.convert_tokens_to_ids(SHEPHERD_STEP_TAG)
    candidates = tokenizer.encode(f"{SHEPHERD_GOOD} {SHEPHERD_BAD}")[1:]  # the card's own expression
    if tokenizer.encode(SHEPHERD_STEP_TAG)[-1] != tag_id or len(set(candidates)) != 2:
        raise AssertionError(f"step tag / candidate tokens are not single tokens: {tag_id}, {candidates}")
    config = build_config("mistral", tokenizer, kind="critic", pad="none")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    good, bad = candidates
    with torch.no_grad():
        # the tag's own embedding zeroed: its hidden state is then its context's, so steps differ
        model.model.embed_tokens.weight[tag_id] = 0
        texts = [
            f"{q} " + "\n".join(f"Step {i}: {s} {SHEPHERD_STEP_TAG}" for i, s in enumerate(steps, 1))
            for q, steps in _prm_calibration_items()
        ]
        hidden = torch.cat([_tag_states(model.model, tokenizer(t)["input_ids"], tag_id) for t in texts])
        rows = model.lm_head.weight
        rows[[good, bad]] = torch.randn(2, config.hidden_size) * 0.3
        diffs = hidden @ (rows[good] - rows[bad])
        rows[[good, bad]] *= PRM_LOGIT_SPREAD / diffs.std()
        # centred: logit('+') - logit('-') has mean ~0 over the calibration steps
        mean_h = hidden.mean(0)
        rows[good] -= (hidden @ (rows[good] - rows[bad])).mean() * mean_h / mean_h.square().sum()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _build_qwen_prm(out: Path, *, seed: int, vocab_size: int) -> Path:
    import torch
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    tokenizer = build_tokenizer("qwen2", corpus=PRM_TEXT, vocab_size=vocab_size)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [QWEN_PRM_STEP_TOKEN]}, replace_extra_special_tokens=False
    )
    (out / "configuration_qwen2_rm.py").write_text(QWEN_PRM_CONFIG_SOURCE.lstrip())
    (out / "modeling_qwen2_rm.py").write_text(QWEN_PRM_MODEL_SOURCE.lstrip())
    # transformers' own remote-code loader (it resolves the modeling file's relative import)
    config_cls = get_class_from_dynamic_module("configuration_qwen2_rm.Qwen2RMConfig", str(out))
    model_cls = get_class_from_dynamic_module("modeling_qwen2_rm.Qwen2ForProcessRewardModel", str(out))
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        num_labels=2,
        architectures=["Qwen2ForProcessRewardModel"],
        auto_map={
            "AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
            "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel",
        },
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    tag_id = tokenizer.convert_tokens_to_ids(QWEN_PRM_STEP_TOKEN)
    with torch.no_grad():
        # the tag's own embedding zeroed: its hidden state is then its context's, so steps differ
        model.model.embed_tokens.weight[tag_id] = 0
        torch.nn.init.normal_(model.score[2].weight, std=1.0)
        texts = [
            tokenizer.apply_chat_template(
                [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": QWEN_PRM_STEP_TOKEN.join(steps) + QWEN_PRM_STEP_TOKEN},
                ],
                tokenize=False,
            )
            for q, steps in _prm_calibration_items()
        ]
        features = torch.cat(
            [model.score[:2](_tag_states(model.model, tokenizer(t)["input_ids"], tag_id)) for t in texts]
        )
        head = model.score[2]
        diffs = features @ (head.weight[1] - head.weight[0]) + head.bias[1] - head.bias[0]
        head.weight *= PRM_LOGIT_SPREAD / diffs.std()
        head.bias *= PRM_LOGIT_SPREAD / diffs.std()
        # centred: logit(positive) - logit(negative) has mean ~0 over the calibration steps
        head.bias[1] -= (features @ (head.weight[1] - head.weight[0]) + head.bias[1] - head.bias[0]).mean()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _prm_calibration_items() -> list[tuple[str, list[str]]]:
    """(question, steps) pairs from PRM_TEXT and SAMPLE_TEXT, to spread and centre the PRMs' heads."""
    import re

    sentences = [x for text in (*PRM_TEXT, *SAMPLE_TEXT) for x in re.split(r"(?<=[.!?])\s+", text) if x.strip()]
    return [(sentences[i], sentences[i + 1 : i + 5]) for i in range(0, len(sentences) - 4, 3)]


def _tag_states(base_model, ids: list[int], tag_id: int):
    """The base model's last hidden states (after its final norm) at the step tags, [n_tags, hidden]."""
    import torch

    ids = torch.tensor([ids])
    return base_model(input_ids=ids).last_hidden_state[ids == tag_id]
