"""vLLM's pooling API clients against the app (uvicorn, API key on), replaying vLLM's own example
clients and its server tests' requests (vllm-project/vllm):
- examples/pooling/classify/openai_classification_client.py @926c71f6 (`post_http_request`,
  POST /classify {"model", "input": [prompts]});
- examples/pooling/pooling/openai_pooling_client.py @d1a2e946 (POST /pooling, completion and chat
  forms, content as text parts) and examples/pooling/reward/sequence_reward_online.py @bf433df3
  (the model's id from GET /v1/models `data[0]["id"]`);
- examples/pooling/score/openai_cross_encoder_score.py @c6991a3b (POST /score, text_1/text_2 1:1,
  1:N, N:N) and examples/pooling/score/jinaai_rerank_client.py @e5fd201a (POST /rerank);
- tests/entrypoints/pooling/classify/test_online.py @ceb32e77 (truncate_prompt_tokens, errors read
  as `["error"]["message"]`, /tokenize read as `["tokens"]`).
The examples send no API key; the README gives vLLM clients the key in the URL (`?api_key=`) or
an `Authorization: Bearer` header (what the OpenAI SDK sends): the requests here carry it in the URL.
Answers are the vLLM server's shapes, with the card's rewards (activation as vLLM applies it).
"""

from __future__ import annotations

import pytest
from helpers import API_KEY, TOL

from cluster.core.inputs import EncodeOptions
from cluster.core.results import sigmoid

requests = pytest.importorskip("requests")


def post_http_request(payload: dict, api_url: str) -> requests.Response:
    """vllm-project/vllm@926c71f6 examples/pooling/classify/openai_classification_client.py"""
    headers = {"User-Agent": "Test Client"}
    response = requests.post(api_url, headers=headers, json=payload)
    return response


def url(live, path: str) -> str:
    return f"{live['keyed']}{path}?api_key={API_KEY}"


PROMPTS = [
    "Hello, my name is",
    "The president of the United States is",
    "The capital of France is",
    "The future of AI is",
]


def test_classification_client(live):
    rm = live["models"]["rm"]
    model_name = "rm"
    api_url = url(live, "/classify")
    payload = {
        "model": model_name,
        "input": PROMPTS,
    }
    classify_response = post_http_request(payload=payload, api_url=api_url)
    assert classify_response.status_code == 200, classify_response.text
    body = classify_response.json()
    assert body["id"].startswith("classify-") and body["object"] == "list" and body["model"] == "rm"
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details"}
    expected = rm.score(PROMPTS)  # a pre-templated text scored as the card tokenizes it
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert all(len(d["probs"]) == 1 for d in body["data"])
    assert [d["probs"][0] for d in body["data"]] == pytest.approx([sigmoid(e) for e in expected], abs=1e-5)
    assert all(d["num_classes"] == 1 and d["label"] == "LABEL_0" for d in body["data"])
    raw = post_http_request({**payload, "use_activation": False}, api_url).json()
    assert [d["probs"][0] for d in raw["data"]] == pytest.approx(expected, abs=TOL)
    # vLLM's older spellings of use_activation
    for old in ("activation", "softmax", "normalize"):
        got = post_http_request({"model": model_name, "input": PROMPTS[0], old: False}, api_url).json()
        assert got["data"][0]["probs"][0] == pytest.approx(expected[0], abs=TOL), old


def test_classify_token_ids_special_tokens_and_chat_messages(live):
    rm = live["models"]["rm"]
    tok = rm.encoder.tokenizer
    api_url = url(live, "/classify")
    ids = rm.encoder.encode_inputs([PROMPTS[1]])[0].ids
    got = post_http_request({"model": "rm", "input": ids, "use_activation": False}, api_url).json()
    assert got["data"][0]["probs"][0] == pytest.approx(rm.score([PROMPTS[1]])[0], abs=TOL)
    both = post_http_request({"model": "rm", "input": [ids, ids[1:]], "use_activation": False}, api_url).json()
    assert both["usage"]["prompt_tokens"] == 2 * len(ids) - 1
    # add_special_tokens: false is the client's choice: no BOS (the card's ids have one)
    bare = tok(PROMPTS[1], add_special_tokens=False)["input_ids"]
    assert bare != ids
    got = post_http_request(
        {"model": "rm", "input": PROMPTS[1], "add_special_tokens": False, "use_activation": False}, api_url
    ).json()
    assert got["data"][0]["probs"][0] == pytest.approx(rm.runner.score_ids([bare])[0], abs=TOL)
    # chat form: content as text parts, a name, the conversation's own roles
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "What is 2 + 3?", "name": "alice"},
        {"role": "assistant", "content": [{"type": "text", "text": "It is"}, {"type": "text", "text": "5."}]},
    ]
    plain = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "It is\n5."},
    ]
    got = post_http_request({"model": "rm", "messages": messages, "use_activation": False}, api_url).json()
    assert got["data"][0]["probs"][0] == pytest.approx(rm.score([plain])[0], abs=TOL)
    # the last turn need not be the assistant's, as in vLLM
    text = tok.apply_chat_template(plain[:2], tokenize=False)
    got = post_http_request({"model": "rm", "messages": plain[:2], "use_activation": False}, api_url).json()
    assert got["data"][0]["probs"][0] == pytest.approx(rm.score([text])[0], abs=TOL)


def test_pooling_client(live):
    rm = live["models"]["rm"]
    models_url, pooing_url = url(live, "/v1/models"), url(live, "/pooling")
    response = requests.get(models_url)
    model = response.json()["data"][0]["id"]
    assert model == "rm"
    prompt = {"model": model, "input": "vLLM is great!"}
    pooling_response = post_http_request(prompt, pooing_url)
    assert pooling_response.status_code == 200, pooling_response.text
    body = pooling_response.json()
    assert body["id"].startswith("pool-") and body["data"][0]["object"] == "pooling"
    # raw, as vLLM's reward runner gave it
    assert body["data"][0]["data"] == pytest.approx(rm.score(["vLLM is great!"]), abs=TOL)
    prompt = {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "vLLM is great!"}],
            }
        ],
    }
    chat = post_http_request(prompt, pooing_url).json()
    text = rm.encoder.tokenizer.apply_chat_template([{"role": "user", "content": "vLLM is great!"}], tokenize=False)
    assert chat["data"][0]["data"] == pytest.approx(rm.score([text]), abs=TOL)
    classify = post_http_request({"model": model, "input": "vLLM is great!", "task": "classify"}, pooing_url).json()
    assert classify["data"][0]["data"] == pytest.approx([sigmoid(rm.score(["vLLM is great!"])[0])], abs=1e-5)
    per_token = post_http_request({"model": model, "input": "x", "task": "token_classify"}, pooing_url)
    assert per_token.status_code == 400
    assert "Task token_classify is not supported" in per_token.json()["error"]["message"]


def test_cross_encoder_score_client(live):
    """A reward model scores (text_1, text_2) as a prompt and its response: sigmoid(reward)."""
    rm = live["models"]["rm"]
    api_url = url(live, "/score")

    def expected(pairs):
        return [
            sigmoid(r)
            for r in rm.score([[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs])
        ]

    text_1 = "What is the capital of Brazil?"
    text_2 = "The capital of Brazil is Brasilia."
    prompt = {"model": "rm", "text_1": text_1, "text_2": text_2}
    score_response = post_http_request(prompt, api_url)
    assert score_response.status_code == 200, score_response.text
    body = score_response.json()
    assert body["id"].startswith("score-") and body["data"][0]["object"] == "score"
    assert [d["score"] for d in body["data"]] == pytest.approx(expected([(text_1, text_2)]), abs=1e-5)
    text_1 = "What is the capital of France?"
    text_2 = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    body = post_http_request({"model": "rm", "text_1": text_1, "text_2": text_2}, url(live, "/v1/score")).json()
    assert [d["score"] for d in body["data"]] == pytest.approx(expected([(text_1, t) for t in text_2]), abs=1e-5)
    text_1 = ["What is the capital of Brazil?", "What is the capital of France?"]
    text_2 = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    body = post_http_request({"model": "rm", "queries": text_1, "documents": text_2}, api_url).json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert [d["score"] for d in body["data"]] == pytest.approx(expected(list(zip(text_1, text_2))), abs=1e-5)
    bad = post_http_request({"model": "rm", "text_1": text_1, "text_2": text_2 + ["x"]}, api_url)
    assert bad.status_code == 400 and "1:1, 1:N or N:N" in bad.json()["error"]["message"]


def test_rerank_client(live):
    """Best-of-n: the documents (responses) of one query ranked by the reward."""
    rm = live["models"]["rm"]
    headers = {"accept": "application/json", "Content-Type": "application/json"}
    data = {
        "model": "rm",
        "query": "What is the capital of France?",
        "documents": [
            "The capital of Brazil is Brasilia.",
            "The capital of France is Paris.",
            "Horses and cows are both animals",
        ],
    }
    response = requests.post(url(live, "/rerank"), headers=headers, json=data)
    assert response.status_code == 200, response.text
    body = response.json()
    rewards = rm.score(
        [[{"role": "user", "content": data["query"]}, {"role": "assistant", "content": d}] for d in data["documents"]]
    )
    order = sorted(range(3), key=lambda i: rewards[i], reverse=True)
    assert [r["index"] for r in body["results"]] == order
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(
        [sigmoid(rewards[i]) for i in order], abs=1e-5
    )
    assert [r["document"]["text"] for r in body["results"]] == [data["documents"][i] for i in order]
    top = requests.post(url(live, "/v1/rerank"), json={**data, "top_n": 1}).json()
    assert [r["index"] for r in top["results"]] == order[:1]


def test_tokenize_health_version(live):
    rm = live["models"]["rm"]
    input_text = "The capital of France is Paris."
    body = requests.post(url(live, "/tokenize"), json={"model": "rm", "prompt": input_text}).json()
    assert body["tokens"] == rm.encoder.encode_inputs([input_text])[0].ids  # the ids the model scores
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 512
    health = requests.get(f"{live['keyed']}/health")  # health checks need no key (load balancers)
    assert health.status_code == 200 and health.content == b""
    assert requests.get(url(live, "/version")).json()["version"]


def test_errors_are_vllm_error_responses(live):
    """400 (never 422) for bad input, 404 for an unknown model, over-length input refused unless
    truncate_prompt_tokens asks for a cut (vLLM's test_online.py expectations)."""
    rm = live["models"]["rm"]
    api_url = url(live, "/classify")
    bad = post_http_request({"model": "rm"}, api_url)
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400 and "input or messages" in error["message"]
    unknown = post_http_request({"model": "nope", "input": "x"}, api_url)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
    long_text = "hello " * 600
    too_long = post_http_request({"model": "rm", "input": long_text}, api_url)
    assert too_long.status_code == 400 and "limit of 512" in too_long.json()["error"]["message"]
    over = post_http_request({"model": "rm", "input": long_text, "truncate_prompt_tokens": 513}, api_url)
    assert over.status_code == 400 and "truncate_prompt_tokens" in over.json()["error"]["message"]
    cut = post_http_request(
        {"model": "rm", "input": long_text, "truncate_prompt_tokens": 5, "use_activation": False}, api_url
    ).json()
    assert cut["usage"]["prompt_tokens"] == 5
    ids = rm.encoder.encode_inputs([long_text], options=EncodeOptions(truncate=5))[0].ids
    assert len(ids) == 5 and ids[0] == rm.encoder.bos_id  # the last tokens, and the BOS kept
    assert cut["data"][0]["probs"][0] == pytest.approx(rm.runner.score_ids([ids])[0], abs=TOL)
    whole = post_http_request({"model": "rm", "input": long_text, "truncate_prompt_tokens": -1}, api_url)
    assert whole.status_code == 200 and whole.json()["usage"]["prompt_tokens"] == 512
    missing = requests.post(url(live, "/v1/nothing"), json={})
    assert missing.status_code == 404 and "no route POST /v1/nothing" in missing.json()["error"]["message"]
