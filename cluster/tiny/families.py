"""The families: for each, a byte-level BPE trained on a few sentences, the family's special tokens,
post-processor and chat template in its real format, and a 2-layer model of its own config class.
Variants cover what the scoring semantics must survive: a template that does or does not write BOS, a
tokenizer that does or does not add it (or declares a BOS and never adds it, or has none), a pad token
that is separate, equal to EOS, or absent, encoders that pool [CLS], and several output labels."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cluster.kinds import KINDS, kind_of

ARCHES = ("llama", "gemma2", "qwen2", "qwen3", "mistral", "smollm", "gpt_neox", "bert", "deberta_v2")

SAMPLE_TEXT = [
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants.",
    "You should choose the assistant that follows the user's instructions and answers the user's question better.",
    "The capital of France is Paris. The capital of Japan is Tokyo. Water boils at 100 degrees Celsius.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "I'm sorry, but I can't help with that request. Is there anything else I can do for you?",
    "Sure! Here is a detailed, step-by-step explanation with examples, code and a short summary.",
    "[[A]] [[B]] Assistant A's answer is better. Assistant B's answer is better.",
    "[User Question] [The Start of Assistant A's Answer] [The End of Assistant B's Answer]",
    "1 2 3 4 5 6 7 8 9 10 + - * / = ( ) { } < > # ## **bold** - item",
]


@dataclass(frozen=True)
class Family:
    """What the scoring semantics must get right about a model family, as its real files have it."""

    bos: str | None  # the declared BOS token (None: the family has none, e.g. Qwen)
    eos: str  # end of a turn; also the generation stop token
    pad: str | None  # the family's own pad token (None: it has none, e.g. Mistral)
    extra: tuple[str, ...]
    template: str | None  # chat template, with "BOS" where the real one writes {{ bos_token }}
    template_bos: bool  # the real template writes the BOS
    adds_bos: bool  # the real tokenizer's post-processor prepends the BOS
    encoder: bool = False  # [CLS] q [SEP] a [SEP], pooled at [CLS]; no chat template


# Llama-3.1 format. Skywork's reward models ship it without the BOS (adds_bos does it); Meta's and
# the Skywork critics' templates write it too (template_bos=True: the doubled BOS case).
LLAMA_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = BOS + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Gemma-2 (assistant is 'model'; no system role)
GEMMA2_TEMPLATE = (
    "BOS"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Qwen2.5: ChatML with a default system prompt; no BOS anywhere
QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# Qwen3 (the Skywork-Reward-V2-Qwen3 family): ChatML, no default system prompt; earlier assistant
# turns lose their reasoning, and the last one gets an (empty) <think> block, as the real template does
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content.split('</think>')[-1].lstrip('\n') %}"
    "{%- if loop.last %}{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' + content + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# Mistral-7B-Instruct-v0.2 ([INST]; user/assistant alternate; no system role; BOS in the template
# and from the tokenizer)
MISTRAL_TEMPLATE = (
    "BOS{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ ' [INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
# SmolLM2-Instruct: ChatML whose declared BOS is <|im_start|>, never added by the tokenizer
SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# OpenAssistant's GPT-NeoX (Pythia) reward format; BOS == EOS == <|endoftext|>, never added
OASST_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|prompter|>' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ '<|system|>' + message['content'] + eos_token }}"
    "{% else %}{{ '<|assistant|>' + message['content'] + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

ENCODER_SPECIALS = ("[UNK]", "[MASK]")
FAMILIES = {
    "llama": Family(
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
        ("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"),
        LLAMA_TEMPLATE,
        False,
        True,
    ),
    "gemma2": Family("<bos>", "<end_of_turn>", "<pad>", ("<eos>", "<start_of_turn>"), GEMMA2_TEMPLATE, True, True),
    "qwen2": Family(None, "<|im_end|>", "<|endoftext|>", ("<|im_start|>",), QWEN2_TEMPLATE, False, False),
    "qwen3": Family(
        None, "<|im_end|>", "<|endoftext|>", ("<|im_start|>", "<think>", "</think>"), QWEN3_TEMPLATE, False, False
    ),
    "mistral": Family("<s>", "</s>", None, ("<unk>",), MISTRAL_TEMPLATE, True, True),
    "smollm": Family("<|im_start|>", "<|im_end|>", "<|im_end|>", ("<|endoftext|>",), SMOLLM_TEMPLATE, False, False),
    "gpt_neox": Family(
        "<|endoftext|>",
        "<|endoftext|>",
        "<|padding|>",
        ("<|prompter|>", "<|assistant|>", "<|system|>"),
        OASST_TEMPLATE,
        False,
        False,
    ),
    "bert": Family("[CLS]", "[SEP]", "[PAD]", ENCODER_SPECIALS, None, False, True, encoder=True),
    "deberta_v2": Family("[CLS]", "[SEP]", "[PAD]", ENCODER_SPECIALS, None, False, True, encoder=True),
}


def chat_template(arch: str, template_bos: bool) -> str | None:
    template = FAMILIES[arch].template
    if template is None:
        return None
    if arch == "llama":
        return template.replace("BOS + content", "bos_token + content" if template_bos else "content")
    return template.replace("BOS", "{{ bos_token }}" if template_bos else "", 1)


def build_tokenizer(
    arch: str = "llama",
    *,
    template_bos: bool | None = None,
    tokenizer_adds_bos: bool | None = None,
    pad: Literal["separate", "eos", "none"] = "separate",
    corpus: Iterable[str] = (),
    vocab_size: int = 512,
):
    """A byte-level BPE tokenizer with the family's special tokens, post-processor and chat template
    (None for template_bos / tokenizer_adds_bos: as the family's real files have it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    fam = FAMILIES[arch]
    template_bos = fam.template_bos if template_bos is None else template_bos
    adds_bos = fam.adds_bos if tokenizer_adds_bos is None else tokenizer_adds_bos
    specials = list(dict.fromkeys(t for t in (fam.bos, fam.eos, fam.pad, *fam.extra) if t is not None))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*SAMPLE_TEXT, *corpus], trainer=trainer)
    if fam.encoder:  # BERT's pair format: token type 1 for the second segment
        cls_id, sep_id = tok.token_to_id(fam.bos), tok.token_to_id(fam.eos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A {fam.eos}",
            pair=f"{fam.bos} $A {fam.eos} $B:1 {fam.eos}:1",
            special_tokens=[(fam.bos, cls_id), (fam.eos, sep_id)],
        )
    elif adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A",
            pair=f"{fam.bos} $A {fam.bos} $B",
            special_tokens=[(fam.bos, tok.token_to_id(fam.bos))],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    pad_token = {"separate": fam.pad, "eos": fam.eos, "none": None}[pad]
    if fam.encoder:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            cls_token=fam.bos,
            sep_token=fam.eos,
            pad_token=pad_token,
            unk_token="[UNK]",
            mask_token="[MASK]",
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=fam.bos,
            eos_token=fam.eos,
            pad_token=pad_token,
            additional_special_tokens=[t for t in fam.extra if t not in (fam.bos, fam.eos, pad_token)],
            model_input_names=["input_ids", "attention_mask"],
        )
        fast.chat_template = chat_template(arch, template_bos)
    return fast


HELPSTEER2_LABELS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def build_config(
    arch: str,
    tokenizer,
    *,
    kind: str,
    pad: str,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_positions: int = 4096,
    labels: tuple[str, ...] | None = None,
):
    import transformers

    fam = FAMILIES[arch]
    pad_id = {
        "separate": tokenizer.convert_tokens_to_ids(fam.pad) if fam.pad else None,
        "eos": tokenizer.eos_token_id,
        "none": None,
    }[pad]
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    if kind_of(kind).head == "sequence":
        labels = labels or ("LABEL_0",)
        common.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    if fam.encoder:
        common.pop("tie_word_embeddings")
        if arch == "bert":
            return transformers.BertConfig(type_vocab_size=2, **common)
        # DeBERTa-v3-style: relative attention, no absolute positions, no token types (the
        # OpenAssistant reward-model-deberta-v3 setup)
        return transformers.DebertaV2Config(
            type_vocab_size=0,
            relative_attention=True,
            position_biased_input=False,
            pos_att_type=["p2c", "c2p"],
            max_relative_positions=-1,
            position_buckets=32,
            pooler_hidden_size=hidden,
            **common,
        )
    common.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(rotary_pct=0.25, use_parallel_residual=True, **common)
    common["num_key_value_heads"] = kv_heads
    if arch in ("llama", "smollm"):
        return transformers.LlamaConfig(**common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "qwen3":
        return transformers.Qwen3Config(head_dim=hidden // heads, **common)
    if arch == "mistral":
        return transformers.MistralConfig(sliding_window=None, **common)
    # Gemma-2 keeps its soft-capping and sliding window (smaller than our test lengths, so exercised)
    return transformers.Gemma2Config(
        head_dim=hidden // heads,
        sliding_window=32,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        query_pre_attn_scalar=hidden // heads,
        **common,
    )


def build_tiny_model(
    out: str | Path,
    *,
    kind: str = "reward",
    arch: str = "llama",
    template_bos: bool | None = None,
    tokenizer_adds_bos: bool | None = None,
    pad: str = "separate",
    seed: int = 0,
    corpus: Iterable[str] = (),
    vocab_size: int = 512,
    teach_steps: int = 20,
    thinking: bool = False,
    teach_examples: Sequence[tuple[str | list[dict], str]] = (),
    **config_overrides,
) -> Path:
    """Write a seeded tiny reward model or critic to `out` (config, weights, tokenizer, template).
    template_bos / tokenizer_adds_bos default to the family's real setup (a llama critic writes
    the BOS in its template, as Meta's and Skywork-Critic's do; a llama reward model does not, as
    Skywork-Reward's does not)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig

    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}, got {arch!r}")
    head = kind_of(kind).head if kind in KINDS else None
    if head not in ("sequence", "next_token"):  # a prm: build_tiny_prm
        raise ValueError(f"kind must be 'reward', 'critic', 'pointwise' or 'generative', got {kind!r}")
    if head == "next_token" and FAMILIES[arch].encoder:
        raise ValueError(f"{arch} is an encoder; a {kind} judge is a causal LM")
    if template_bos is None and head == "next_token" and arch == "llama":
        template_bos = True
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(
        arch,
        template_bos=template_bos,
        tokenizer_adds_bos=tokenizer_adds_bos,
        pad=pad,
        corpus=corpus,
        vocab_size=vocab_size,
    )
    config = build_config(arch, tokenizer, kind=kind, pad=pad, **config_overrides)
    torch.manual_seed(seed)
    auto_cls = AutoModelForSequenceClassification if head == "sequence" else AutoModelForCausalLM
    model = auto_cls.from_config(config)
    if head == "sequence":
        # a larger head than the default init spreads scores out, so ordering checks mean something
        head = model.score if hasattr(model, "score") else model.classifier  # decoders / encoders
        torch.nn.init.normal_(head.weight, std=1.0)
    else:
        fam = FAMILIES[arch]
        stops = [
            tokenizer.eos_token_id,
            *(tokenizer.convert_tokens_to_ids(t) for t in fam.extra[:1] if arch == "llama"),
        ]
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=config.pad_token_id,
            eos_token_id=stops,
            do_sample=False,
        )
        if teach_steps and teach_examples:  # a generative judge: the answers its clients' prompts ask for
            _teach(model, tokenizer, teach_examples, teach_steps)
        elif teach_steps and thinking:  # a reasoning judge: <think>...</think>, then its answer
            teach_thinking_format(model, tokenizer, kind, steps=teach_steps, seed=seed)
        elif teach_steps and kind_of(kind).unit != "chat":  # a judge answers in its format: a rating or a verdict
            teach = teach_rating_format if kind_of(kind).rates else teach_verdict_format
            teach(model, tokenizer, steps=teach_steps, seed=seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# An ArmoRM-style custom head (RLHFlow/ArmoRM-Llama3-8B-v0.1's shape, loaded with trust_remote_code):
# multi-objective rewards read at the token before the first pad, a gate, score = sum(gate * rewards),
# and `logits` is that score with shape (batch,). Its pooling is its own: only its forward knows it.
CUSTOM_HEAD_SOURCE = """
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel, LlamaPreTrainedModel
from transformers.utils import ModelOutput


class TinyGatedRewardConfig(LlamaConfig):
    model_type = "tiny_gated_reward"

    def __init__(self, num_objectives=4, **kwargs):
        super().__init__(**kwargs)
        self.num_objectives = num_objectives


@dataclass
class GatedRewardOutput(ModelOutput):
    logits: torch.FloatTensor | None = None
    rewards: torch.FloatTensor | None = None
    gating_output: torch.FloatTensor | None = None
    score: torch.FloatTensor | None = None


class TinyGatedRewardModel(LlamaPreTrainedModel):
    config_class = TinyGatedRewardConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.regression_layer = nn.Linear(config.hidden_size, config.num_objectives, bias=False)
        self.gating = nn.Linear(config.hidden_size, config.num_objectives)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(input_ids.shape[0], device=hidden.device)
        # ArmoRM's rule: the token before the first pad, modulo the length (no pad: the last token)
        last = (torch.eq(input_ids, self.config.pad_token_id).int().argmax(-1) - 1) % input_ids.shape[-1]
        rewards = self.regression_layer(hidden[rows, last])
        gate = torch.softmax(self.gating(hidden[:, 0]), dim=-1)
        score = (gate * rewards).sum(-1)
        return GatedRewardOutput(logits=score, rewards=rewards, gating_output=gate, score=score)
"""


def build_custom_head_model(out: str | Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """A tiny trust_remote_code reward model (ArmoRM-style gated head) with its modeling file, as the
    hub ships such models: config.json's auto_map points at tiny_gated_reward.py in the directory."""
    import importlib.util
    import sys

    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = out / "tiny_gated_reward.py"
    source.write_text(CUSTOM_HEAD_SOURCE.lstrip())
    module_name = f"tiny_gated_reward_{abs(hash(str(out)))}"
    spec = importlib.util.spec_from_file_location(module_name, source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    tokenizer = build_tokenizer("llama", template_bos=True, vocab_size=vocab_size)  # Meta's template, as ArmoRM's
    config = module.TinyGatedRewardConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
        architectures=["TinyGatedRewardModel"],
        auto_map={
            "AutoConfig": "tiny_gated_reward.TinyGatedRewardConfig",
            "AutoModelForSequenceClassification": "tiny_gated_reward.TinyGatedRewardModel",
        },
    )
    torch.manual_seed(seed)
    model = module.TinyGatedRewardModel(config)
    torch.nn.init.normal_(model.regression_layer.weight, std=1.0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


TEACH_QUESTIONS = [
    "What is the capital of France?",
    "Add 2 and 3.",
    "Name a prime number.",
    "How do I print in Python?",
    "Say something kind.",
    "What boils at 100 degrees?",
]
TEACH_ANSWERS = [
    "Paris.",
    "The capital of France is Paris.",
    "5",
    "2 + 3 = 5, because addition.",
    "7 is prime.",
    "print(add(2, 3))",
    "Sure! Here is a detailed answer.",
    "I'm sorry, I can't help.",
]


def teach_verdict_format(model, tokenizer, *, steps: int = 40, seed: int = 0) -> None:
    """A few optimizer steps so the tiny critic answers in the judge format ([[A]] / [[B]], then
    end of turn), preferring the longer answer. It learns the format, which is what the generate
    path and the fast path's agreement with generation are tested on; its judgement means nothing."""
    import random

    from cluster.kinds.critic import skywork_critic_template

    rng = random.Random(seed)
    template = skywork_critic_template()
    examples = []
    for _ in range(16):
        a, b = rng.sample(TEACH_ANSWERS, 2)
        prompt = template.format(input=rng.choice(TEACH_QUESTIONS), response_a=a, response_b=b)
        examples.append((prompt, "[[A]]" if len(a) >= len(b) else "[[B]]"))
    _teach(model, tokenizer, examples, steps)


def teach_rating_format(model, tokenizer, *, steps: int = 40, seed: int = 0) -> None:
    """The pointwise twin of `teach_verdict_format`: the tiny judge answers the default pointwise
    prompt with a short remark then a rating in MT-Bench's format ("... [[7]]"), higher for longer
    answers, so the generate path has a rating to find at the end of its answer."""
    import random

    from cluster.kinds.pointwise import pointwise_template

    rng = random.Random(seed)
    template = pointwise_template()
    examples = []
    for _ in range(16):
        answer = rng.choice(TEACH_ANSWERS)
        prompt = template.format(input=rng.choice(TEACH_QUESTIONS), response=answer)
        rating = min(10, 2 + len(answer) // 5)
        examples.append((prompt, f"{'Long' if rating > 5 else 'Short'} answer. [[{rating}]]"))
    _teach(model, tokenizer, examples, steps)


def teach_thinking_format(model, tokenizer, kind: str, *, steps: int = 60, seed: int = 0) -> None:
    """A reasoning judge's format: it thinks first, naming the other answer in the verdict format
    (a decoy for a reader that does not skip the reasoning), then states its own verdict or rating
    after `</think>`. The critic writes its final verdict as `\\boxed{A}` (what a verdict_pattern
    reads; the exact strings `[[A]]` appear only in its reasoning); the pointwise judge as `[[7]]`."""
    import random

    from cluster.kinds.critic import skywork_critic_template
    from cluster.kinds.pointwise import pointwise_template

    rng = random.Random(seed)
    examples = []
    for _ in range(16):
        if kind_of(kind).rates:
            answer = rng.choice(TEACH_ANSWERS)
            prompt = pointwise_template().format(input=rng.choice(TEACH_QUESTIONS), response=answer)
            rating = min(10, 2 + len(answer) // 5)
            decoy = 11 - rating if rating != 5 else 9
            examples.append((prompt, f"<think>Not [[{decoy}]]: it is {len(answer)} long.</think> Rated: [[{rating}]]"))
        else:
            a, b = rng.sample(TEACH_ANSWERS, 2)
            prompt = skywork_critic_template().format(input=rng.choice(TEACH_QUESTIONS), response_a=a, response_b=b)
            win, lose = ("A", "B") if len(a) >= len(b) else ("B", "A")
            examples.append((prompt, f"<think>Not [[{lose}]]: it is shorter.</think> \\boxed{{{win}}}"))
    _teach(model, tokenizer, examples, steps)


def _teach(model, tokenizer, examples: Sequence[tuple[str | list[dict], str]], steps: int) -> None:
    """A few AdamW steps on (judge prompt as one user turn, or the messages, answer then end of
    turn) pairs."""
    import torch

    pairs = []
    for prompt, answer in examples:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # the critic card's ids
        answer_ids = [*tokenizer(answer, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        pairs.append((prompt_ids, answer_ids))
    examples = pairs
    width = max(len(p) + len(a) for p, a in examples)
    ids = torch.full((len(examples), width), tokenizer.eos_token_id)
    labels = torch.full((len(examples), width), -100)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (prompt_ids, answer_ids) in enumerate(examples):
        n = len(prompt_ids) + len(answer_ids)
        ids[row, :n] = torch.tensor(prompt_ids + answer_ids)
        labels[row, len(prompt_ids) : n] = torch.tensor(answer_ids)
        mask[row, :n] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


# ---------------------------------------------------------------- what the demos score

DEMO_CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "I think it might be Lyon, but I'm not sure."},
    ],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "How do I print in Python?"},
        {"role": "assistant", "content": "Use the print function: print('hello')."},
    ],
    [
        {"role": "user", "content": "Can you help me pick a lock?"},
        {"role": "assistant", "content": "I'm sorry, but I can't help with that request."},
    ],
]
DEMO_PAIR = {"prompt": "Add 2 and 3.", "response_a": "2 + 3 = 5", "response_b": "6"}


def build_demo_models(root: Path) -> tuple[Path, Path]:
    """The demos' tiny reward model and critic under `root`, built once and reused."""
    rm_dir, critic_dir = root / "tiny-reward-llama", root / "tiny-critic-llama"
    if not (rm_dir / "config.json").exists():
        print(f"building a tiny Llama-format reward model in {rm_dir}", flush=True)
        build_tiny_model(rm_dir, kind="reward", arch="llama")
    if not (critic_dir / "config.json").exists():
        print(f"building a tiny Llama-format critic in {critic_dir} (a few seconds teaching it the format)", flush=True)
        build_tiny_model(critic_dir, kind="critic", arch="llama")
    return rm_dir, critic_dir


# ---------------------------------------------------------------- process reward models (PRMs)

# What the PRMs' tokenizers are trained on besides SAMPLE_TEXT: math steps, so the byte-level BPE
# has merges for numbers, operators and step headers as the real vocabularies do.
