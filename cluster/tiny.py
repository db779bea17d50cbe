"""Tiny, seeded models in the real families' formats, saved with save_pretrained.

No model hub here, so tests, the demo and the benchmark build their own: a byte-level BPE trained on
a few sentences, the family's chat template (Llama-3.1 as Skywork ships it, or Gemma-2), and a
2-layer LlamaConfig/Gemma2Config. Variants cover what the scoring semantics must survive: a
template that does or does not write BOS, a tokenizer that does or does not add it, and a pad token
that is separate, equal to EOS, or absent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ARCHES = ("llama", "gemma2")

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
class Special:
    bos: str
    eos: str  # end of a turn; also the generation stop token
    pad: str
    extra: tuple[str, ...]


SPECIALS = {
    "llama": Special("<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>",
                     ("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>")),
    "gemma2": Special("<bos>", "<end_of_turn>", "<pad>", ("<eos>", "<start_of_turn>")),
}

# Llama-3.1 format as in Skywork-Reward-Llama-3.1-8B (BOS removed from the template) ...
LLAMA_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = BOS + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# ... and Gemma-2's (assistant is 'model'; no system role).
GEMMA2_TEMPLATE = (
    "BOS"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def chat_template(arch: str, template_bos: bool) -> str:
    if arch == "llama":
        return LLAMA_TEMPLATE.replace("BOS + content", "bos_token + content" if template_bos else "content")
    return GEMMA2_TEMPLATE.replace("BOS", "{{ bos_token }}" if template_bos else "", 1)


def build_tokenizer(arch: str = "llama", *, template_bos: bool = False, tokenizer_adds_bos: bool = True,
                    pad: Literal["separate", "eos", "none"] = "separate", corpus: Iterable[str] = (),
                    vocab_size: int = 512):
    """A byte-level BPE tokenizer with the family's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sp = SPECIALS[arch]
    specials = [sp.bos, sp.eos, sp.pad, *sp.extra]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([*SAMPLE_TEXT, *corpus], trainer=trainer)
    bos_id = tok.token_to_id(sp.bos)
    if tokenizer_adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{sp.bos} $A", pair=f"{sp.bos} $A {sp.bos} $B", special_tokens=[(sp.bos, bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=sp.bos, eos_token=sp.eos,
        pad_token={"separate": sp.pad, "eos": sp.eos, "none": None}[pad],
        additional_special_tokens=list(sp.extra),
    )
    fast.chat_template = chat_template(arch, template_bos)
    return fast


def build_config(arch: str, tokenizer, *, kind: str, pad: str, hidden: int = 64, layers: int = 2,
                 heads: int = 4, kv_heads: int = 2, intermediate: int = 128, max_positions: int = 4096):
    from transformers import Gemma2Config, LlamaConfig

    sp = SPECIALS[arch]
    pad_id = {"separate": tokenizer.convert_tokens_to_ids(sp.pad), "eos": tokenizer.eos_token_id, "none": None}[pad]
    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=intermediate, max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    if kind == "reward":
        common["num_labels"] = 1
    if arch == "llama":
        return LlamaConfig(**common)
    # Gemma-2 keeps its soft-capping and sliding window (smaller than our test lengths, so exercised)
    return Gemma2Config(head_dim=hidden // heads, sliding_window=32, attn_logit_softcapping=50.0,
                        final_logit_softcapping=30.0, query_pre_attn_scalar=hidden // heads, **common)


def build_tiny_model(out: str | Path, *, kind: str = "reward", arch: str = "llama", template_bos: bool = False,
                     tokenizer_adds_bos: bool = True, pad: str = "separate", seed: int = 0,
                     corpus: Iterable[str] = (), vocab_size: int = 512, teach_steps: int = 20,
                     **config_overrides) -> Path:
    """Write a seeded tiny reward model or critic to `out` (config, weights, tokenizer, template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig

    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}, got {arch!r}")
    if kind not in ("reward", "critic"):
        raise ValueError(f"kind must be 'reward' or 'critic', got {kind!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(arch, template_bos=template_bos, tokenizer_adds_bos=tokenizer_adds_bos,
                                pad=pad, corpus=corpus, vocab_size=vocab_size)
    config = build_config(arch, tokenizer, kind=kind, pad=pad, **config_overrides)
    torch.manual_seed(seed)
    auto_cls = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    model = auto_cls.from_config(config)
    if kind == "reward":
        # a larger head than the default init spreads scores out, so ordering checks mean something
        torch.nn.init.normal_(model.score.weight, std=1.0)
    else:
        sp = SPECIALS[arch]
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, pad_token_id=config.pad_token_id,
            eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(sp.extra[0])],
            do_sample=False,
        )
        if teach_steps:
            teach_verdict_format(model, tokenizer, steps=teach_steps, seed=seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


TEACH_QUESTIONS = ["What is the capital of France?", "Add 2 and 3.", "Name a prime number.",
                   "How do I print in Python?", "Say something kind.", "What boils at 100 degrees?"]
TEACH_ANSWERS = ["Paris.", "The capital of France is Paris.", "5", "2 + 3 = 5, because addition.",
                 "7 is prime.", "print(add(2, 3))", "Sure! Here is a detailed answer.", "I'm sorry, I can't help."]


def teach_verdict_format(model, tokenizer, *, steps: int = 40, seed: int = 0) -> None:
    """A few optimizer steps so the tiny critic answers in the judge format ([[A]] / [[B]], then
    end of turn), preferring the longer answer. It learns the format, which is what the generate
    path and the fast path's agreement with generation are tested on; its judgement means nothing."""
    import random

    import torch

    from cluster.config import skywork_critic_template

    rng = random.Random(seed)
    template = skywork_critic_template()
    examples = []
    for _ in range(16):
        a, b = rng.sample(TEACH_ANSWERS, 2)
        prompt = template.format(input=rng.choice(TEACH_QUESTIONS), response_a=a, response_b=b)
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not prompt_ids or prompt_ids[0] != tokenizer.bos_token_id:
            prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
        answer = "[[A]]" if len(a) >= len(b) else "[[B]]"
        answer_ids = [*tokenizer(answer, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        examples.append((prompt_ids, answer_ids))
    width = max(len(p) + len(a) for p, a in examples)
    ids = torch.full((len(examples), width), tokenizer.eos_token_id)
    labels = torch.full((len(examples), width), -100)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (prompt_ids, answer_ids) in enumerate(examples):
        n = len(prompt_ids) + len(answer_ids)
        ids[row, :n] = torch.tensor(prompt_ids + answer_ids)
        labels[row, len(prompt_ids):n] = torch.tensor(answer_ids)
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
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}],
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "I think it might be Lyon, but I'm not sure."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "How do I print in Python?"},
     {"role": "assistant", "content": "Use the print function: print('hello')."}],
    [{"role": "user", "content": "Can you help me pick a lock?"},
     {"role": "assistant", "content": "I'm sorry, but I can't help with that request."}],
]
DEMO_PAIR = {"prompt": "Add 2 and 3.", "response_a": "2 + 3 = 5", "response_b": "6"}


def build_demo_models(root: Path) -> tuple[Path, Path]:
    """The demos' tiny reward model and critic under `root`, built once and reused."""
    rm_dir, critic_dir = root / "tiny-reward-llama", root / "tiny-critic-llama"
    if not (rm_dir / "config.json").exists():
        print(f"building a tiny Llama-format reward model in {rm_dir}", flush=True)
        build_tiny_model(rm_dir, kind="reward", arch="llama")
    if not (critic_dir / "config.json").exists():
        print(f"building a tiny Llama-format critic in {critic_dir} (a few seconds teaching it the format)",
              flush=True)
        build_tiny_model(critic_dir, kind="critic", arch="llama")
    return rm_dir, critic_dir
