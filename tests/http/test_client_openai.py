"""POST /v1/chat/completions replayed with the `openai` package itself (openai-python: `OpenAI` and
`AsyncOpenAI`, `chat.completions.create`, its streaming reader and its typed errors), as verl's
GenRM reward function, ROLL, AReaL and NeMo Gym call an LLM judge, against the in-process app on
a real socket (no Ray). Every answer is compared with the model card's reference: one-at-a-time
`model.generate` (greedy, fp32) and the log-softmax of one forward pass over prompt + answer."""

from __future__ import annotations

import asyncio

import openai
import pytest
import torch
from helpers import API_KEY

MESSAGES = [
    [{"role": "user", "content": "Which answer is better? [A] 2 + 3 = 5 [B] 6"}],
    [{"role": "system", "content": "You judge answers."}, {"role": "user", "content": "Rate: the sky is green."}],
    [{"role": "user", "content": [{"type": "text", "text": "Is "}, {"type": "text", "text": "water wet?"}]}],
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def reference(critic_dir):
    """The card's greedy generation, one conversation at a time, and its tokens' log-softmax."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(critic_dir)
    model = AutoModelForCausalLM.from_pretrained(critic_dir, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])

    def prompt(messages) -> list[int]:
        text_messages = [
            {
                **m,
                "content": m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"]),
            }
            for m in messages
        ]
        return tok.apply_chat_template(text_messages, add_generation_prompt=True, tokenize=True, return_dict=False)

    def answer(messages, max_tokens=MAX_TOKENS):
        ids = prompt(messages)
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_tokens,
                temperature=None,
                top_p=None,
                top_k=None,
            )[0, len(ids) :].tolist()
            finish = "length"
            if out and out[-1] in eos:
                out, finish = out[:-1], "stop"
            logits = model(torch.tensor([ids + out])).logits[0].float().log_softmax(-1)
        logprobs = [logits[len(ids) - 1 + k, t].item() for k, t in enumerate(out)]
        return {
            "text": tok.decode(out, skip_special_tokens=True),
            "ids": out,
            "logprobs": logprobs,
            "finish": finish,
            "prompt_tokens": len(ids),
        }

    def logprobs_of(messages, tokens: list[str]) -> list[float]:
        """The log-softmax of each answer token, the answer as vLLM's `token_id:<id>` texts."""
        ids, out = prompt(messages), [int(t.removeprefix("token_id:")) for t in tokens]
        with torch.inference_mode():
            logits = model(torch.tensor([ids + out])).logits[0].double().log_softmax(-1)
        return [logits[len(ids) - 1 + k, t].item() for k, t in enumerate(out)]

    def top_of(messages, answer_so_far: list[int], k: int) -> list[tuple[str, float]]:
        ids = prompt(messages) + list(answer_so_far)
        with torch.inference_mode():
            logprobs = model(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
        values, indices = logprobs.topk(k)
        return [(tok.decode([i]), v) for i, v in zip(indices.tolist(), values.tolist())]

    answer.logprobs_of, answer.top_of = logprobs_of, top_of
    return answer


@pytest.fixture(scope="module")
def client(live):
    with openai.OpenAI(base_url=live["keyed"] + "/v1", api_key=API_KEY, max_retries=0) as c:
        yield c


@pytest.mark.parametrize("at", range(len(MESSAGES)))
def test_greedy_text_equals_one_at_a_time_generate(client, reference, at):
    ref = reference(MESSAGES[at])
    out = client.chat.completions.create(model="judge", messages=MESSAGES[at], temperature=0, max_tokens=MAX_TOKENS)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == ref["text"]
    assert out.choices[0].finish_reason == ref["finish"]
    assert out.usage.prompt_tokens == ref["prompt_tokens"]
    assert out.usage.completion_tokens == len(ref["ids"])
    assert out.usage.total_tokens == ref["prompt_tokens"] + len(ref["ids"])
    assert out.model == "judge"


def test_logprobs_equal_the_cards_log_softmax(client, reference):
    ref = reference(MESSAGES[0])
    out = client.chat.completions.create(
        model="judge", messages=MESSAGES[0], temperature=0, max_completion_tokens=MAX_TOKENS, logprobs=True
    )
    content = out.choices[0].logprobs.content
    assert len(content) == len(ref["ids"]) > 0
    for got, want in zip(content, ref["logprobs"]):
        assert got.logprob == pytest.approx(want, abs=1e-4)
    assert "".join(c.token for c in content).strip() != ""


def test_stream_concatenates_to_the_same_text_with_usage(client, reference):
    ref = reference(MESSAGES[1])
    stream = client.chat.completions.create(
        model="judge",
        messages=MESSAGES[1],
        temperature=0,
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == ref["text"]
    assert finish == ref["finish"]
    assert usage.completion_tokens == len(ref["ids"]) and usage.prompt_tokens == ref["prompt_tokens"]


def test_async_client_concurrent_requests_each_equal_their_reference(live, reference):
    """16 concurrent AsyncOpenAI requests (they share decode steps on the model side): each
    answer is its own conversation's greedy answer."""
    convs = [[{"role": "user", "content": f"Judge answer number {i}: " + "word " * (i % 5)}] for i in range(16)]

    async def main():
        async with openai.AsyncOpenAI(base_url=live["keyed"] + "/v1", api_key=API_KEY, max_retries=0) as c:
            return await asyncio.gather(
                *(c.chat.completions.create(model="judge", messages=m, temperature=0, max_tokens=16) for m in convs)
            )

    outs = asyncio.run(main())
    for conv, out in zip(convs, outs):
        assert out.choices[0].message.content == reference(conv, 16)["text"]


def test_n_and_stop(client, reference):
    ref = reference(MESSAGES[0])
    out = client.chat.completions.create(model="judge", messages=MESSAGES[0], temperature=0, max_tokens=MAX_TOKENS, n=2)
    assert [c.index for c in out.choices] == [0, 1]
    assert all(c.message.content == ref["text"] for c in out.choices)
    assert out.usage.completion_tokens == 2 * len(ref["ids"])
    stop = ref["text"][len(ref["text"]) // 2 :][:2]
    assert stop.strip(), ref["text"]
    cut = client.chat.completions.create(
        model="judge", messages=MESSAGES[0], temperature=0, max_tokens=MAX_TOKENS, stop=[stop]
    )
    assert cut.choices[0].message.content == ref["text"][: ref["text"].find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_errors_are_the_clients_typed_errors(live, client):
    with openai.OpenAI(base_url=live["keyed"] + "/v1", api_key="wrong-key", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="judge", messages=MESSAGES[0])
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES[0])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="judge", messages=MESSAGES[0], temperature=2.5)
    with pytest.raises(openai.BadRequestError, match="logprobs must be true"):
        client.chat.completions.create(model="judge", messages=MESSAGES[0], top_logprobs=3)
    with pytest.raises(openai.BadRequestError, match="reward"):
        client.chat.completions.create(model="rm", messages=MESSAGES[0])
    with pytest.raises(openai.BadRequestError, match="max_length"):
        client.chat.completions.create(model="judge", messages=MESSAGES[0], max_tokens=100_000)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="judge", messages=[])


# ---------------------------------------------------------------- sampling and top_logprobs


@pytest.fixture(scope="module")
def first_token(critic_dir):
    """The card's next-token distribution after a conversation's generation prompt: softmax of the
    logits over the temperature, the top-p nucleus kept (HF's TopPLogitsWarper rule: the smallest
    set whose mass reaches top_p), renormalized."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(critic_dir)
    model = AutoModelForCausalLM.from_pretrained(critic_dir, dtype=torch.float32).eval()

    def distribution(messages, temperature, top_p=1.0):
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        probs = (logits / temperature).softmax(-1)
        order = probs.argsort(descending=True)
        keep = (probs[order].cumsum(0) - probs[order]) < top_p  # mass before each token below top_p
        nucleus = torch.zeros_like(probs)
        nucleus[order[keep]] = probs[order[keep]]
        eos = model.generation_config.eos_token_id
        return nucleus / nucleus.sum(), tok, eos if isinstance(eos, list) else [eos]

    return distribution


END = "<end>"


def outcomes(p: torch.Tensor, tok, eos_ids) -> dict[str, float]:
    """The card's distribution over what the wire can tell apart: a token's text (byte pieces of
    one character all read as U+FFFD), or an end token (no text, finish_reason stop)."""
    out: dict[str, float] = {}
    for i in torch.nonzero(p).flatten().tolist():
        key = END if i in eos_ids else tok.decode([i])
        out[key] = out.get(key, 0.0) + p[i].item()
    return out


def drawn(choices) -> list[str]:
    keys = []
    for c in choices:
        if not c.logprobs.content:
            assert c.finish_reason == "stop"
            keys.append(END)
        else:
            keys.append(c.logprobs.content[0].token)
    return keys


@pytest.mark.parametrize("seeded", [False, True], ids=["shared-loop", "seeded"])
def test_sampling_draws_from_the_cards_tempered_nucleus(client, first_token, seeded):
    """Temperature and top-p sampling, on the shared sampling loop and on the seeded path: the first
    token of 320 one-token answers is distributed as the card's softmax(logits / T) restricted to
    the top-p nucleus (total variation < 0.1 over its four likeliest tokens and the rest: greedy
    would put all mass on one, a sampler that ignored the temperature much more than the card's on
    the likeliest), and no draw falls outside the nucleus (a sampler that ignored top_p would)."""
    messages = [{"role": "user", "content": "Say something kind."}]
    p, tok, eos_ids = first_token(messages, temperature=1.7, top_p=0.8)
    assert len(outcomes(p, tok, eos_ids)) >= 3  # a spread the test can see
    ask = dict(model="judge", messages=messages, max_tokens=1, temperature=1.7, top_p=0.8, logprobs=True)
    choices = []
    if seeded:
        for seed in range(320):
            choices += client.chat.completions.create(**ask, seed=seed).choices
    else:
        for _ in range(20):
            choices += client.chat.completions.create(**ask, n=16).choices
    want, got = outcomes(p, tok, eos_ids), drawn(choices)
    outside = sorted({k for k in got if k not in want})
    assert not outside, f"tokens outside the top-p nucleus: {outside}"
    # the four likeliest outcomes and the rest: bins 320 draws measure to a few percent
    bins = sorted(want, key=want.get, reverse=True)[:4]
    expected = [want[k] for k in bins] + [1 - sum(want[k] for k in bins)]
    seen = [got.count(k) / len(got) for k in bins] + [sum(k not in bins for k in got) / len(got)]
    assert 0.5 * sum(abs(a - b) for a, b in zip(seen, expected)) < 0.1, (bins, seen, expected)


def test_a_seed_gives_the_same_sample_whoever_else_is_served(live, reference):
    """The same seed, alone and among concurrent unseeded and greedy requests: the same text;
    another seed: another sample (over several answers); logprobs the card's log-softmax."""
    messages = MESSAGES[1]

    async def main():
        async with openai.AsyncOpenAI(base_url=live["keyed"] + "/v1", api_key=API_KEY, max_retries=0) as c:

            def seeded(seed):
                return c.chat.completions.create(
                    model="judge",
                    messages=messages,
                    max_tokens=12,
                    temperature=1.3,
                    seed=seed,
                    logprobs=True,
                    n=2,
                    extra_body={"return_tokens_as_token_ids": True},  # vLLM's: ids, not texts
                )

            alone = await seeded(7)
            crowd = await asyncio.gather(
                seeded(7),
                *(
                    c.chat.completions.create(model="judge", messages=m, max_tokens=12, temperature=1.0)
                    for m in MESSAGES
                ),
                *(c.chat.completions.create(model="judge", messages=m, max_tokens=12) for m in MESSAGES),
                seeded(8),
            )
            return alone, crowd[0], crowd[-1]

    alone, again, other = asyncio.run(main())
    texts = [c.message.content for c in alone.choices]
    assert texts == [c.message.content for c in again.choices]
    assert texts != [c.message.content for c in other.choices]
    for choice in alone.choices:  # the model's own logprobs of what it sampled (before temperature)
        ref = reference.logprobs_of(messages, [t.token for t in choice.logprobs.content])
        got = [t.logprob for t in choice.logprobs.content]
        assert got == pytest.approx(ref, abs=1e-4)


def test_top_logprobs_are_the_cards_likeliest_tokens(client, reference):
    out = client.chat.completions.create(
        model="judge", messages=MESSAGES[0], max_tokens=MAX_TOKENS, logprobs=True, top_logprobs=5
    )
    ref = reference(MESSAGES[0])
    content = out.choices[0].logprobs.content
    assert out.choices[0].message.content == ref["text"]
    for k, entry in enumerate(content):
        want = reference.top_of(MESSAGES[0], ref["ids"][:k], 5)
        assert [t.token for t in entry.top_logprobs] == [t for t, _ in want]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx([lp for _, lp in want], abs=1e-4), k
        assert entry.top_logprobs[0].token == entry.token  # greedy wrote the likeliest
