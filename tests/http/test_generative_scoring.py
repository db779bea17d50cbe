"""Generative scores of a causal LM (the served critic): the probability of chosen tokens at the next
token after a prompt, from one forward pass, against the app on a real socket (no Ray), replaying
the two protocols' requests as their schemas and handlers build them:

- vLLM's POST /generative_scoring (PR vllm-project/vllm#34539): request and answer
  `GenerativeScoringRequest` / `GenerativeScoringResponse` in
  vllm/entrypoints/generate/generative_scoring/serving.py @5d089e01fc67d6eb12cba7e238b6a7de3235fdb9
  (route: api_router.py @9ba035fc9031ac071f9b3500ba24a429cadbabef, `POST /generative_scoring`, the body
  as JSON): the query tokenized with `add_special_tokens`, each item without, ids joined (item first
  with `item_first`); score = P(label_token_ids[0]), softmax over the label ids (`apply_softmax`, the
  default) or over the whole vocabulary; read as `response.json()["data"][i]["score"]`;
- SGLang's decoder-only POST /v1/score (PR sgl-project/sglang#6460): `ScoringRequest` /
  `ScoringResponse` in python/sglang/srt/entrypoints/openai/protocol.py
  @9b116dffe828b2dfa7ec0e4d061555b6c354b67a, handler serving_score.py
  @083d601378d0baaef6191e7f2d40fb70d06518af, prompts as tokenizer_manager's `score_request` builds
  them (text query and items joined as one text, `f"{query}{item}"`, tokenized by default; ids
  joined); read as `response.json()["scores"][i][k]`, one probability per label id, in order.

The reference is computed directly: transformers' own `AutoModelForCausalLM.from_pretrained` on the
tiny critic, one prompt at a time, `model(input_ids).logits[0, -1].float().log_softmax(-1)` (fp32),
within 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import API_KEY

requests = pytest.importorskip("requests")

TOL = 1e-5
QUERY = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Is the following answer correct? Answer Yes or No. "
)
ITEMS = ["Paris is the capital of France.", "2 + 3 = 6", "Water boils at 100 degrees Celsius at sea level."]


@pytest.fixture(scope="module")
def reference(critic_dir):
    """The card's computation, independent of `cluster`: the tokenizer and model straight from
    transformers, one prompt at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(critic_dir)
    model = AutoModelForCausalLM.from_pretrained(critic_dir, dtype=torch.float32).eval()

    def logprobs(input_ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return model(torch.tensor([input_ids])).logits[0, -1].float().log_softmax(-1)

    return {"tok": tok, "logprobs": logprobs}


def label_ids(tok) -> list[int]:
    """Three tokens a judge may write next: the verdict strings' A and B, and a word's first token."""
    a = tok("[[A]]", add_special_tokens=False)["input_ids"]
    b = tok("[[B]]", add_special_tokens=False)["input_ids"]
    return [a[1], b[1], tok(" Yes", add_special_tokens=False)["input_ids"][0]]


def probs(logprobs: torch.Tensor, labels: list[int], apply_softmax: bool) -> list[float]:
    chosen = logprobs[labels].double()
    return (chosen.softmax(-1) if apply_softmax else chosen.exp()).tolist()


def vllm_ids(tok, query, item, item_first: bool, add_special_tokens: bool = True) -> list[int]:
    """vLLM `_build_prompts`: tokenizer.encode(query, add_special_tokens=...) and each item with none."""
    q = tok.encode(query, add_special_tokens=add_special_tokens) if isinstance(query, str) else list(query)
    i = tok.encode(item, add_special_tokens=False) if isinstance(item, str) else list(item)
    return i + q if item_first else q + i


def post(live, path: str, payload: dict) -> requests.Response:
    return requests.post(f"{live['keyed']}{path}", json=payload, headers={"Authorization": f"Bearer {API_KEY}"})


# ---------------------------------------------------------------- vLLM /generative_scoring


@pytest.mark.parametrize("apply_softmax", [True, False])
@pytest.mark.parametrize("item_first", [False, True])
def test_vllm_generative_scoring_equals_the_next_token_reference(live, reference, apply_softmax, item_first):
    tok = reference["tok"]
    labels = label_ids(tok)
    request = {
        "model": "judge",
        "query": QUERY,
        "items": ITEMS,
        "label_token_ids": labels,
        "apply_softmax": apply_softmax,
        "item_first": item_first,
    }
    response = post(live, "/generative_scoring", request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("generative-scoring-") and body["object"] == "list" and body["model"] == "judge"
    assert isinstance(body["created"], int)
    prompts = [vllm_ids(tok, QUERY, item, item_first) for item in ITEMS]
    assert body["usage"]["prompt_tokens"] == sum(len(p) for p in prompts) == body["usage"]["total_tokens"]
    assert body["usage"]["completion_tokens"] == 0  # nothing is generated
    for i, (data, ids) in enumerate(zip(body["data"], prompts)):
        assert data["index"] == i and data["object"] == "score"
        expected = probs(reference["logprobs"](ids), labels, apply_softmax)[0]
        assert abs(data["score"] - expected) <= TOL, (i, data["score"], expected)


def test_vllm_generative_scoring_token_ids_and_special_tokens(live, reference):
    """Pre-tokenized query and items (used as given), and add_special_tokens: false (no BOS on the
    query); the default model (the first causal LM served) when none is named."""
    tok = reference["tok"]
    labels = label_ids(tok)[:2]
    query_ids = tok.encode(QUERY, add_special_tokens=False)
    item_ids = [tok.encode(item, add_special_tokens=False) for item in ITEMS[:2]]
    body = post(live, "/generative_scoring", {"query": query_ids, "items": item_ids, "label_token_ids": labels}).json()
    for data, item in zip(body["data"], item_ids):
        expected = probs(reference["logprobs"](query_ids + item), labels, True)[0]
        assert abs(data["score"] - expected) <= TOL
    bare = post(
        live,
        "/generative_scoring",
        {"model": "judge", "query": QUERY, "items": ITEMS[:1], "label_token_ids": labels, "add_special_tokens": False},
    ).json()
    ids = vllm_ids(tok, QUERY, ITEMS[0], False, add_special_tokens=False)
    assert ids[0] != tok.bos_token_id
    assert abs(bare["data"][0]["score"] - probs(reference["logprobs"](ids), labels, True)[0]) <= TOL


def test_vllm_generative_scoring_refusals_in_vllms_error_shape(live, reference):
    tok = reference["tok"]
    vocab = len(tok)
    base = {"model": "judge", "query": QUERY, "items": ITEMS[:1], "label_token_ids": label_ids(tok)}

    def error(payload: dict, status: int = 400) -> str:
        response = post(live, "/generative_scoring", payload)
        assert response.status_code == status, response.text
        err = response.json()["error"]
        assert err["code"] == status and err["type"] in ("BadRequestError", "NotFoundError")
        return err["message"]

    assert f"token id {vocab + 7} is outside this model's vocabulary (0..{vocab - 1})" in error(
        {**base, "label_token_ids": [3, vocab + 7]}
    )
    assert "label_token_ids[1]" in error({**base, "label_token_ids": [3, vocab + 7]})
    assert "label_token_ids must contain at least one token ID" in error({**base, "label_token_ids": []})
    assert "items must contain at least one item" in error({**base, "items": []})
    assert "over this model's limit of 4096" in error({**base, "query": [5] * 4100})
    assert "items[0]: token id" in error({**base, "items": [[5, vocab]]})
    message = error({**base, "model": "rm"})
    assert "model 'rm' is a reward model, not a causal LM" in message, message
    assert "not a causal LM" in error({**base, "model": "rm-mix"})  # an ensemble of reward models
    assert "is not served here" in error({**base, "model": "no-such-model"}, 404)
    assert "apply_softmax" in error({**base, "apply_softmax": 1})  # a bool is a bool


def test_next_token_op_shares_the_query_prefix_and_equals_one_at_a_time(live, reference):
    """The engine side: the runner's next_token op over the three prompts computes the shared query
    once (fewer tokens computed than the prompts hold) and gives each prompt's own row."""
    critic = live["models"]["judge"]
    tok = reference["tok"]
    seqs = [vllm_ids(tok, QUERY, item, False) for item in ITEMS]
    assert len(seqs[0]) - len(tok.encode(ITEMS[0], add_special_tokens=False)) >= 32  # a prefix worth sharing
    ran = critic.runner.run("next_token", seqs)
    assert ran.computed < sum(len(s) for s in seqs)
    for row, ids in zip(ran.outputs, seqs):
        assert row.shape == (len(reference["logprobs"](ids)),)
        assert torch.allclose(torch.as_tensor(row), reference["logprobs"](ids), atol=TOL, rtol=0)


# ---------------------------------------------------------------- SGLang /v1/score (decoder-only)


@pytest.mark.parametrize("apply_softmax", [False, True])
@pytest.mark.parametrize("item_first", [False, True])
def test_sglang_decoder_only_score_equals_the_next_token_reference(live, reference, apply_softmax, item_first):
    """SGLang's `Engine.score` docstring example's shape: a text query, text items, two label ids;
    scores[i] is every label's probability, in label_token_ids' order."""
    tok = reference["tok"]
    labels = label_ids(tok)
    request = {
        "query": QUERY,
        "items": ITEMS,
        "label_token_ids": labels,
        "apply_softmax": apply_softmax,
        "item_first": item_first,
        "model": "judge",
    }
    response = requests.post(f"{live['trusted']}/v1/score", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "scoring" and body["model"] == "judge" and len(body["scores"]) == len(ITEMS)
    for item, scores in zip(ITEMS, body["scores"]):
        text = f"{item}{QUERY}" if item_first else f"{QUERY}{item}"
        expected = probs(reference["logprobs"](tok(text)["input_ids"]), labels, apply_softmax)
        assert len(scores) == len(labels)
        assert all(abs(a - b) <= TOL for a, b in zip(scores, expected)), (scores, expected)
        if apply_softmax:
            assert math.isclose(sum(scores), 1.0, abs_tol=1e-9)


def test_sglang_decoder_only_score_token_ids_and_refusals(live, reference):
    tok = reference["tok"]
    labels = label_ids(tok)[:2]
    query_ids = tok.encode(QUERY)
    items = [tok.encode(item, add_special_tokens=False) for item in ITEMS]
    body = requests.post(
        f"{live['trusted']}/v1/score", json={"query": query_ids, "items": items, "label_token_ids": labels}
    ).json()
    for item, scores in zip(items, body["scores"]):
        expected = probs(reference["logprobs"](query_ids + item), labels, False)
        assert all(abs(a - b) <= TOL for a, b in zip(scores, expected))
    mixed = requests.post(
        f"{live['trusted']}/v1/score", json={"query": QUERY, "items": items, "label_token_ids": labels}
    )
    assert mixed.status_code == 400 and "Invalid combination of query/items types" in mixed.text
    reward = requests.post(
        f"{live['trusted']}/v1/score", json={"model": "rm", "query": "q", "items": ["a"], "label_token_ids": [1]}
    )
    assert reward.status_code == 400 and "not a causal LM" in reward.json()["error"]["message"]
    both = requests.post(
        f"{live['trusted']}/v1/score", json={"text_1": "q", "text_2": "a", "query": "q", "label_token_ids": [1]}
    )
    assert both.status_code == 400 and "give one form" in both.text
    # without label_token_ids, /v1/score is vLLM's score, as before
    vllm = requests.post(
        f"{live['trusted']}/v1/score", json={"model": "rm", "text_1": "q", "text_2": "a", "use_activation": False}
    )
    assert vllm.status_code == 200 and vllm.json()["data"][0]["object"] == "score"
