"""The model cards' own reference computations for process reward models and pointwise judges.

One item at a time, straight transformers calls, the way each card does it, with nothing from
`cluster` imported: a bug in the package cannot hide in its own yardstick. Deviations from the
literal card code are only these: fp32 on CPU instead of bf16 / device_map="auto", inference_mode,
and the loaded model cached per path.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

# ----------------------------------------------------------------------------- Qwen2.5-Math-PRM
# Card: https://huggingface.co/Qwen/Qwen2.5-Math-PRM-7B (README.md, "Hugging Face Transformers"
# section; the README revision seen was 0610740 "Fix backslashes in prompt example (#5)"; the same
# code is on the Qwen2.5-Math-PRM-72B and Qwen2.5-Math-7B-PRM800K cards).


def make_step_rewards(logits, token_masks):
    """Verbatim from the card."""
    probabilities = F.softmax(logits, dim=-1)
    probabilities = probabilities * token_masks.unsqueeze(-1)  # bs, seq_len, num_labels

    all_scores_res = []
    for i in range(probabilities.size(0)):
        sample = probabilities[i]  # seq_len, num_labels
        positive_probs = sample[sample != 0].view(-1, 2)[:, 1]  # valid_tokens, num_labels
        non_zero_elements_list = positive_probs.cpu().tolist()
        all_scores_res.append(non_zero_elements_list)
    return all_scores_res


@cache
def _qwen_prm(path: str):
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = AutoModel.from_pretrained(path, dtype=torch.float32, trust_remote_code=True).eval()
    return tokenizer, model


def qwen_card_conversation(path, system: str, query: str, steps: list[str]) -> str:
    """The card's text: the steps joined by <extra_0> and ended by one, as the assistant turn."""
    tokenizer, _ = _qwen_prm(str(path))
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": query},
        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def qwen_card_input_ids(path, system: str, query: str, steps: list[str]) -> list[int]:
    tokenizer, _ = _qwen_prm(str(path))
    return tokenizer.encode(qwen_card_conversation(path, system, query, steps))


def qwen_card_step_rewards(path, system: str, query: str, steps: list[str]) -> list[float]:
    """One reward per step: P(positive) at each <extra_0>, as the card computes it."""
    tokenizer, model = _qwen_prm(str(path))
    conversation_str = qwen_card_conversation(path, system, query, steps)
    input_ids = tokenizer.encode(conversation_str, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        outputs = model(input_ids=input_ids)
    step_sep_id = tokenizer.encode("<extra_0>")[0]
    token_masks = input_ids == step_sep_id
    step_reward = make_step_rewards(outputs[0], token_masks)
    return step_reward[0]


# ------------------------------------------------------------------------- math-shepherd PRM
# Card: https://huggingface.co/peiyi9979/math-shepherd-mistral-7b-prm (README.md; revision not
# seen here: the code below was checked against a verbatim public copy of the card's snippet,
# IANNXANG/Qwen Math-s.py @ 01015658c519a8ab64e59c498d6ef60723a672c7, whose comments keep the
# card's "# [648, 387]" and "# 12902").

good_token = "+"
bad_token = "-"
step_tag = "ки"


@cache
def _shepherd_prm(path: str):
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return tokenizer, model


def shepherd_card_tokens(path) -> tuple[list[int], int]:
    """(candidate_tokens, step_tag_id) as the card computes them."""
    tokenizer, _ = _shepherd_prm(str(path))
    candidate_tokens = tokenizer.encode(f"{good_token} {bad_token}")[1:]  # [648, 387]
    step_tag_id = tokenizer.encode(f"{step_tag}")[-1]  # 12902
    return candidate_tokens, step_tag_id


def shepherd_card_input_ids(path, question: str, output: str) -> list[int]:
    tokenizer, _ = _shepherd_prm(str(path))
    input_for_prm = f"{question} {output}"
    return tokenizer.encode(input_for_prm)


def shepherd_card_step_rewards(path, question: str, output: str) -> list[float]:
    """One reward per 'ки' in `output` ("Step 1: ... ки\\nStep 2: ... ки"): P('+') among {'+', '-'}."""
    _, model = _shepherd_prm(str(path))
    candidate_tokens, step_tag_id = shepherd_card_tokens(path)
    input_id = torch.tensor([shepherd_card_input_ids(path, question, output)])
    with torch.inference_mode():
        logits = model(input_id).logits[:, :, candidate_tokens]
        scores = logits.softmax(dim=-1)[:, :, 0]
        step_scores = scores[input_id == step_tag_id]
    return step_scores.tolist()


# ------------------------------------------------------------------------- pointwise judges


@cache
def _causal_lm(path: str):
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return tokenizer, model


def pointwise_reference_rating(
    path, prompt_ids: list[int], rating_token_ids: list[int], values: list[float]
) -> tuple[float, list[float]]:
    """One forward on the ids alone; the next-token distribution at the last position restricted to
    the rating tokens (softmax over just those, float64); expected rating = sum p * value."""
    if len(rating_token_ids) != len(values):
        raise ValueError("one value per rating token")
    _, model = _causal_lm(str(path))
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt_ids])).logits[0, -1]
    probs = torch.softmax(logits[list(rating_token_ids)].double(), dim=-1)
    expected = float((probs * torch.tensor(values, dtype=torch.float64)).sum())
    return expected, probs.tolist()


def pointwise_reference_generate(
    path, prompt_ids: list[int], max_new_tokens: int
) -> tuple[str, list[int], list[torch.Tensor]]:
    """Greedy generation of one item: (text without special tokens, new ids, the logits of each
    generated step, [vocab] fp32 each)."""
    tokenizer, model = _causal_lm(str(path))
    ids = torch.tensor([prompt_ids])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=pad,
        )
    new_ids = gen.sequences[0][len(prompt_ids) :].tolist()
    step_logits = [step[0].float() for step in gen.logits]
    return tokenizer.decode(new_ids, skip_special_tokens=True), new_ids, step_logits
