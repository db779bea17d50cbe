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

    def answer(messages, max_tokens=MAX_TOKENS):
        text_messages = [
            {
                **m,
                "content": m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"]),
            }
            for m in messages
        ]
        ids = tok.apply_chat_template(text_messages, add_generation_prompt=True, tokenize=True, return_dict=False)
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
        client.chat.completions.create(model="judge", messages=MESSAGES[0], temperature=0.7)
    with pytest.raises(openai.BadRequestError, match="reward"):
        client.chat.completions.create(model="rm", messages=MESSAGES[0])
    with pytest.raises(openai.BadRequestError, match="max_length"):
        client.chat.completions.create(model="judge", messages=MESSAGES[0], max_tokens=100_000)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="judge", messages=[])
