"""Critic verdicts equal the Skywork-Critic card's computation; fast path agrees with generation."""

from __future__ import annotations

import pytest
import torch
from helpers import card_generate, card_judge_ids, card_next_token_logits

from cluster import InputTooLong, InvalidInput, ModelSpec, load_model
from cluster.kinds.critic import skywork_critic_template

ITEMS = [
    {
        "prompt": "What is the capital of France?",
        "response_a": "The capital of France is Paris.",
        "response_b": "Paris.",
    },
    {"prompt": "Add 2 and 3.", "response_a": "5", "response_b": "2 + 3 = 5, because addition."},
    {
        "prompt": "Say something kind.",
        "response_a": "I'm sorry, I can't help.",
        "response_b": "Sure! Here is a detailed answer.",
    },
    {"prompt": "Name a prime number.", "response_a": "7 is prime.", "response_b": "7 is prime."},
]


def load_critic(path, **kw):
    return load_model(ModelSpec(name="judge", path=str(path), kind="critic", **kw))


def swap(item):
    return {**item, "response_a": item["response_b"], "response_b": item["response_a"]}


def card_prob_a(path, critic, item) -> float:
    """softmax over the whole vocabulary at the step after the verdict prefix, restricted to A vs B."""
    vt = critic.encoder.verdict_tokens
    logits = card_next_token_logits(path, card_judge_ids(path, item, skywork_critic_template()) + vt.prefix)
    probs = torch.softmax(logits, -1)
    return (probs[vt.token_a] / (probs[vt.token_a] + probs[vt.token_b])).item()


def test_template_is_the_skywork_critic_prompt_verbatim():
    text = skywork_critic_template()
    assert text.startswith("Please act as an impartial judge and evaluate the quality of the responses")
    assert '"[[A]]" if assistant A is better, "[[B]]" if assistant B is better.' in text
    assert "[User Question]\n{input}\n\n[The Start of Assistant A's Answer]\n{response_a}\n" in text


def test_verdict_tokens_split_after_the_shared_prefix(critic_dir):
    critic = load_critic(critic_dir)
    tok, vt = critic.encoder.tokenizer, critic.encoder.verdict_tokens
    assert tok.decode(vt.prefix) == "[["
    assert tok.decode([vt.token_a]).startswith("A") and tok.decode([vt.token_b]).startswith("B")


@pytest.mark.parametrize("which", ["taught", "untaught"])
def test_fast_path_matches_the_card_forward(critic_dir, untaught_critic_dir, which):
    path = critic_dir if which == "taught" else untaught_critic_dir
    critic = load_critic(path)
    verdicts = critic.judge(ITEMS)  # one left-padded batch
    for item, v in zip(ITEMS, verdicts):
        expected = card_prob_a(path, critic, item)
        assert v.prob_a == pytest.approx(expected, abs=1e-5)
        assert v.winner == ("A" if expected >= 0.5 else "B")
        assert v.text is None and not v.truncated


def test_fast_path_agrees_with_the_generated_verdict_token(critic_dir):
    """Where the card's greedy generation starts with the verdict prefix, the token it picks next
    is the fast path's winner (greedy takes the argmax, and A vs B is the same comparison)."""
    critic = load_critic(critic_dir)
    vt = critic.encoder.verdict_tokens
    verdicts = critic.judge(ITEMS)
    checked = 0
    for item, v in zip(ITEMS, verdicts):
        new, _ = card_generate(critic_dir, card_judge_ids(critic_dir, item, skywork_critic_template()), 8)
        n = len(vt.prefix)
        if new[:n] == vt.prefix and new[n] in (vt.token_a, vt.token_b):
            assert v.winner == ("A" if new[n] == vt.token_a else "B")
            checked += 1
    assert checked == len(ITEMS)  # the taught critic answers in format for all of them


def test_generate_mode_matches_the_card_generation(critic_dir):
    critic = load_critic(critic_dir, max_new_tokens=8)
    verdicts = critic.judge(ITEMS, mode="generate")
    fast = critic.judge(ITEMS)
    for item, v, f in zip(ITEMS, verdicts, fast):
        _, card_text = card_generate(critic_dir, card_judge_ids(critic_dir, item, skywork_critic_template()), 8)
        assert v.text == card_text
        assert v.winner == {"[[A]]": "A", "[[B]]": "B"}[card_text]
        # prob_a read at the verdict step of the generation is the fast path's
        assert v.prob_a == pytest.approx(f.prob_a, abs=1e-5)


def test_unparseable_generation_is_reported_not_guessed(untaught_critic_dir):
    critic = load_critic(untaught_critic_dir, max_new_tokens=6)
    verdicts = critic.judge(ITEMS[:2], mode="generate")
    for v in verdicts:
        assert "[[A]]" not in v.text and "[[B]]" not in v.text
        assert v.winner is None and v.prob_a is None
        assert isinstance(v.text, str)


@pytest.mark.parametrize("mode", ["logits", "generate"])
def test_debias_averages_both_orders_and_is_symmetric(critic_dir, mode):
    critic = load_critic(critic_dir, max_new_tokens=8)
    plain = critic.judge(ITEMS, mode=mode)
    plain_swapped = critic.judge([swap(i) for i in ITEMS], mode=mode)
    debiased = critic.judge(ITEMS, mode=mode, debias=True)
    debiased_swapped = critic.judge([swap(i) for i in ITEMS], mode=mode, debias=True)
    # the debiased pass computes the two orders' common prefix once (float32 rounding apart, the same)
    for p, ps, d, ds in zip(plain, plain_swapped, debiased, debiased_swapped):
        assert d.prob_a == pytest.approx((p.prob_a + 1 - ps.prob_a) / 2, abs=1e-6)
        assert d.prob_a + ds.prob_a == pytest.approx(1.0, abs=1e-9)
        assert d.winner == ("A" if d.prob_a >= 0.5 else "B")
        if abs(d.prob_a - 0.5) > 1e-9:
            assert {d.winner, ds.winner} == {"A", "B"}
    # identical responses: debiased probability is exactly a coin flip
    assert debiased[3].prob_a == pytest.approx(0.5, abs=1e-6)
    if mode == "generate":
        assert debiased[0].text == plain[0].text and debiased[0].text_swapped == plain_swapped[0].text


def test_long_question_is_cut_from_the_left_and_responses_are_kept(critic_dir):
    critic = load_critic(critic_dir, max_length=512)
    long_item = {
        "prompt": "Tell me everything about France. " * 40 + "THE END?",
        "response_a": "Paris is the capital.",
        "response_b": "Water boils at 100 degrees.",
    }
    [v] = critic.judge([long_item])
    [enc] = critic.encoder.encode_judge_items([long_item])
    assert v.truncated and enc.truncated
    limit = 512 - len(critic.encoder.verdict_tokens.prefix)
    assert limit - 8 <= len(enc.ids) <= limit
    text = critic.encoder.tokenizer.decode(enc.ids)
    assert "THE END?" in text and long_item["response_a"] in text and long_item["response_b"] in text
    assert text.count("Tell me everything about France.") < 40
    assert "Please act as an impartial judge" in text
    with pytest.raises(InputTooLong, match="responses are never cut"):
        critic.judge([{**long_item, "response_a": "Paris " * 400}])
    strict = load_critic(critic_dir, max_length=512, truncation="error")
    with pytest.raises(InputTooLong, match=r"items\[0\]"):
        strict.judge([long_item])


def test_user_text_with_braces_is_not_reformatted(critic_dir):
    critic = load_critic(critic_dir)
    item = {"prompt": "Fill in {response_a} and {}", "response_a": "{input}", "response_b": "}{"}
    [enc] = critic.encoder.encode_judge_items([item])
    text = critic.encoder.tokenizer.decode(enc.ids)
    assert "Fill in {response_a} and {}" in text and "{input}" in text


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([{"prompt": "q", "response_a": "a"}], r"items\[0\]\.response_b: missing"),
        ([{"prompt": "q", "response_a": 1, "response_b": "b"}], r"items\[0\]\.response_a: must be a string"),
        ([{"prompt": "q", "response_a": "a", "response_b": "b", "extra": 1}], r"unknown field"),
        (["not an object"], r"items\[0\]: a judge item must be an object"),
        ({"prompt": "q"}, r"items: expected a list"),
    ],
)
def test_bad_judge_items_are_named(critic_dir, items, message):
    with pytest.raises(InvalidInput, match=message):
        load_critic(critic_dir).judge(items)


def test_unknown_mode_is_rejected(critic_dir):
    with pytest.raises(InvalidInput, match="mode: must be one of logits, generate"):
        load_critic(critic_dir).judge(ITEMS, mode="sample")


@pytest.mark.parametrize("arch", ["gemma2", "qwen2", "mistral", "smollm"])
def test_other_family_critics_match_the_card(model_dirs, arch):
    """The critic card's ids (apply_chat_template(tokenize=True): the template alone decides the
    special tokens) for families with no BOS (Qwen2), a declared-never-added one (SmolLM), and a
    template BOS (Gemma-2, Mistral); Gemma-2's final logit soft-capping applied (its own head runs)."""
    path = model_dirs(f"{arch}-critic", kind="critic", arch=arch, teach_steps=0)
    critic = load_critic(path)
    if arch == "gemma2":
        assert critic.runner.model.config._attn_implementation == "eager"
    for item, enc in zip(ITEMS, critic.encoder.encode_judge_items(ITEMS)):
        assert enc.ids == card_judge_ids(path, item, skywork_critic_template())
    bos = critic.encoder.tokenizer.bos_token_id
    first = critic.encoder.encode_judge_items(ITEMS[:1])[0].ids
    assert (first[0] == bos) == (arch in ("gemma2", "mistral", "smollm"))  # SmolLM's is the template's
    for item, v in zip(ITEMS, critic.judge(ITEMS)):
        assert v.prob_a == pytest.approx(card_prob_a(path, critic, item), abs=1e-5)


def test_reads_beside_the_generation_loop_keep_their_causal_mask(critic_dir):
    """transformers' forward sets `config.is_causal` from its call for the call's length (the
    continuous-batching step passes False): verdict reads running while chat completions generate
    on the same model must still be the reads done alone, and the model's config left as it was."""
    import threading

    from cluster.core.chat import ChatJob

    critic = load_critic(critic_dir, max_new_tokens=8)
    alone = [v.prob_a for v in critic.judge(ITEMS)]
    stop = threading.Event()

    def generate():
        job = ChatJob(messages=[{"role": "user", "content": "Say something kind."}], max_tokens=16, n=2)
        while not stop.is_set():
            critic.runner.chat_runner.chat(job)

    threads = [threading.Thread(target=generate) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(12):
            assert [v.prob_a for v in critic.judge(ITEMS)] == pytest.approx(alone, abs=1e-6)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert getattr(critic.runner.model.config, "is_causal", None) is None
    assert [v.prob_a for v in critic.judge(ITEMS)] == pytest.approx(alone, abs=1e-6)


@pytest.mark.parametrize("arch", ["gemma2", "qwen2"])
def test_generation_equals_the_card_and_leaves_the_reads_as_they_were(model_dirs, arch):
    """A family's critic generates (generate mode, chat) on the continuous-batching loop: the text is
    the card's one-at-a-time `generate`, and the fast path's P(A) afterwards is the card's. Gemma-2
    loads with eager attention (soft-capping); the loop runs it as `paged|eager` and every other
    pass keeps the implementation the model was loaded with."""
    from cluster.core.chat import ChatJob

    path = model_dirs(f"{arch}-critic", kind="critic", arch=arch, teach_steps=0)
    critic = load_critic(path, max_new_tokens=8)
    generated = critic.judge(ITEMS, mode="generate")
    chat = critic.runner.chat_runner.chat(ChatJob(messages=[{"role": "user", "content": "Say hi."}], max_tokens=8))
    for item, g in zip(ITEMS, generated):
        _, card_text = card_generate(path, card_judge_ids(path, item, skywork_critic_template()), 8)
        assert g.text == card_text
    assert chat.choices[0].text  # the loop ran
    for item, v in zip(ITEMS, critic.judge(ITEMS)):
        assert v.prob_a == pytest.approx(card_prob_a(path, critic, item), abs=1e-5)
