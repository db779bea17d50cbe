"""Reasoning judges: the verdict or rating is read after the reasoning (the last `</think>`), by the
exact verdict strings or a judge's own pattern, and its probability at the token that wrote it.

The tiny judges here are taught to think first and to name the other answer inside their reasoning
in the verdict format (`<think>Not [[B]]: ...</think> \\boxed{A}`): a reader that does not skip the
reasoning finds that decoy, so each check below fails for a parser that reads anywhere. The
reference is the card's own loop: `model.generate` one item at a time (greedy, fp32), the text
parsed by the rule as the docs state it, and the probability from a plain forward pass over the
prompt and the answer up to the verdict token."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import card_generate, card_judge_ids, card_next_token_logits
from prm_reference import pointwise_reference_generate

from cluster import ModelSpec, load_model
from cluster.kinds.critic import skywork_critic_template
from cluster.kinds.pointwise import pointwise_template

ITEMS = [
    {"prompt": "Add 2 and 3.", "response_a": "5", "response_b": "2 + 3 = 5, because addition."},
    {
        "prompt": "What is the capital of France?",
        "response_a": "The capital of France is Paris.",
        "response_b": "Paris.",
    },
    {"prompt": "Say something kind.", "response_a": "Sure! Here is a detailed answer.", "response_b": "7 is prime."},
]
RATED = [
    {"prompt": "Add 2 and 3.", "response": "5"},
    {"prompt": "Say something kind.", "response": "Sure! Here is a detailed answer."},
    {"prompt": "Name a prime number.", "response": "7 is prime."},
]
BOXED = r"\\boxed\{(A|B)\}"
NEW = 40


@pytest.fixture(scope="module")
def thinking_critic_dir(model_dirs):
    return model_dirs("thinking-critic", kind="critic", arch="llama", thinking=True, teach_steps=100)


@pytest.fixture(scope="module")
def thinking_judge_dir(model_dirs):
    return model_dirs("thinking-judge", kind="pointwise", arch="llama", thinking=True, teach_steps=100)


def after_reasoning(text: str) -> str | None:
    """The docs' rule: the text after the last `</think>`; None when `<think>` never closes."""
    if "</think>" in text:
        return text[text.rindex("</think>") + len("</think>") :]
    return None if "<think>" in text else text


def card_critic(path, item):
    ids = card_judge_ids(path, item, skywork_critic_template())
    new, text = card_generate(path, ids, NEW)
    return ids, new, text


def test_a_critic_reads_its_verdict_after_the_reasoning_by_its_pattern(thinking_critic_dir):
    critic = load_model(
        ModelSpec(name="j", path=str(thinking_critic_dir), kind="critic", max_new_tokens=NEW, verdict_pattern=BOXED)
    )
    verdicts = critic.judge(ITEMS, mode="generate")
    vt = critic.encoder.verdict_tokens
    for item, v in zip(ITEMS, verdicts):
        ids, new, text = card_critic(thinking_critic_dir, item)
        assert v.text == text  # the whole answer, reasoning kept
        answer = after_reasoning(text)
        assert answer is not None and re.search(r"\[\[[AB]\]\]", text[: text.rindex("</think>")])  # a decoy
        want = re.search(BOXED, answer).group(1)
        assert v.winner == want
        # P(A) at the token that wrote the verdict: the card's logits there, A against B
        t = next(
            j
            for j, tok in enumerate(new)
            if tok == (vt.token_a if want == "A" else vt.token_b)
            and critic.runner.tokenizer.decode(new[: j + 1]).endswith("boxed{" + want)
        )
        logits = card_next_token_logits(thinking_critic_dir, ids + new[:t])
        ref = torch.sigmoid(logits[vt.token_a] - logits[vt.token_b]).item()
        assert v.prob_a == pytest.approx(ref, abs=1e-5)
        assert (v.prob_a >= 0.5) == (want == "A")  # greedy wrote the likelier of the two


def test_the_exact_verdict_strings_in_the_reasoning_are_not_the_verdict(thinking_critic_dir):
    """Without its pattern the judge states no `[[A]]`/`[[B]]` after its reasoning: no verdict, never
    the decoy; with the reasoning rule off (reasoning_end null), the decoy is what a reader finds."""
    spec = dict(name="j", path=str(thinking_critic_dir), kind="critic", max_new_tokens=NEW)
    strict = load_model(ModelSpec(**spec)).judge(ITEMS, mode="generate")
    anywhere = load_model(ModelSpec(**spec, reasoning_end=None)).judge(ITEMS, mode="generate")
    for s, a in zip(strict, anywhere):
        decoy = re.search(r"\[\[([AB])\]\]", s.text).group(1)
        assert s.winner is None and s.prob_a is None
        assert a.winner == decoy and a.prob_a is not None


def test_a_pointwise_judge_rates_after_its_reasoning_and_unfinished_reasoning_rates_nothing(thinking_judge_dir):
    spec = dict(name="r", path=str(thinking_judge_dir), kind="pointwise")
    judge = load_model(ModelSpec(**spec, max_new_tokens=NEW))
    ratings = judge.rate(RATED, mode="generate")
    for r in ratings:
        assert "</think>" in r.text
        want = re.findall(r"\[\[(\d+)\]\]", after_reasoning(r.text))[-1]
        decoys = re.findall(r"\[\[(\d+)\]\]", r.text[: r.text.rindex("</think>")])
        assert decoys and decoys[0] != want
        assert r.rating == float(want)
    # the same judge cut off inside its reasoning, after the decoy: no rating (a reader that reads
    # anywhere would take the decoy)
    first = ratings[0].text
    cut_chars = first.index("]]") + 2
    tok = judge.runner.tokenizer
    new_ids = tok(first, add_special_tokens=False)["input_ids"]
    cut = next(k for k in range(1, len(new_ids) + 1) if len(tok.decode(new_ids[:k])) >= cut_chars)
    short = load_model(ModelSpec(**spec, max_new_tokens=cut)).rate(RATED[:1], mode="generate")[0]
    anywhere = load_model(ModelSpec(**spec, max_new_tokens=cut, reasoning_end=None)).rate(RATED[:1], mode="generate")[0]
    assert "<think>" in short.text and "</think>" not in short.text and "]]" in short.text
    assert short.rating is None and short.probs is None
    assert anywhere.rating == float(re.search(r"\[\[(\d+)\]\]", short.text).group(1))


def test_a_pointwise_rating_and_its_scale_equal_the_card(thinking_judge_dir):
    """The text, the rating and the scale's probabilities at the rating token, against the card's
    one-at-a-time generation and its step logits."""
    judge = load_model(ModelSpec(name="r", path=str(thinking_judge_dir), kind="pointwise", max_new_tokens=NEW))
    ratings = judge.rate(RATED, mode="generate")
    tokens = judge.encoder.rating_tokens.tokens
    for item, r in zip(RATED, ratings):
        ids = card_rating_ids(thinking_judge_dir, item)
        text, new, steps = pointwise_reference_generate(thinking_judge_dir, ids, NEW)
        assert r.text == text
        rating = re.findall(r"\[\[(\d+)\]\]", after_reasoning(text))[-1]
        t = max(
            j
            for j, tok in enumerate(new)
            if tok in tokens and judge.runner.tokenizer.decode(new[: j + 1]).endswith("[[" + rating)
        )
        ref = steps[t][tokens].double().softmax(-1)
        assert r.probs == pytest.approx(ref.tolist(), abs=1e-5)


def card_rating_ids(path, item) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    user = pointwise_template().format(input=item["prompt"], response=item["response"])
    text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]
