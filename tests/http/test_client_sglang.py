"""SGLang's reward-model clients against the app (sgl-project/sglang):
- docs/basic_usage/native_api.ipynb @440d418f, the "Classify (reward model)" cell: the client
  applies the chat template, POSTs {"model", "text": [prompts]} to /classify and reads
  `response["embedding"][0]` for each;
- python/sglang/srt/entrypoints/openai/protocol.py @004c82e0 `EmbeddingRequest` / `ClassifyRequest`
  (POST /v1/embeddings, /v1/classify) and `ErrorResponse`; http_server.py @0025436e /classify
  (one object for one input, a list for a list; PUT as well as POST).
SGLang's examples send no key: they run against the app's trusted-network listener here (the
README's option for header-less clients); a key in `Authorization: Bearer` works as for every route.
"""

from __future__ import annotations

import pytest
from helpers import API_KEY, CONVERSATIONS, TOL

requests = pytest.importorskip("requests")
CONVS = CONVERSATIONS[:3]


def test_native_classify_docs_cell(live):
    rm = live["models"]["rm"]
    tokenizer = rm.encoder.tokenizer  # the docs load the reward model's tokenizer by its hub id
    prompts = tokenizer.apply_chat_template(CONVS, tokenize=False)

    url = f"{live['trusted']}/classify"
    data = {"model": "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2", "text": prompts}

    responses = requests.post(url, json=data).json()
    rewards = [response["embedding"][0] for response in responses]
    assert rewards == pytest.approx(rm.score(CONVS), abs=TOL)
    assert all(r["meta_info"]["prompt_tokens"] > 0 for r in responses)


def test_native_classify_single_input_ids_and_put(live):
    rm = live["models"]["rm"]
    text = rm.encoder.tokenizer.apply_chat_template(CONVS[0], tokenize=False)
    one = requests.post(f"{live['trusted']}/classify", json={"text": text, "rid": "r1"}).json()
    assert isinstance(one, dict) and one["embedding"] == pytest.approx(rm.score(CONVS[:1]), abs=TOL)
    assert one["meta_info"]["id"] == "r1"
    ids = rm.encoder.encode_inputs([text])[0].ids
    by_ids = requests.put(
        f"{live['keyed']}/classify", json={"input_ids": [ids, ids]}, headers={"Authorization": f"Bearer {API_KEY}"}
    ).json()
    assert [r["embedding"][0] for r in by_ids] == pytest.approx(rm.score(CONVS[:1]) * 2, abs=TOL)
    both = requests.post(f"{live['trusted']}/classify", json={"text": text, "input_ids": ids})
    assert both.status_code == 400 and "cannot be provided at the same time" in both.json()["error"]["message"]


def test_openai_embeddings_and_classify(live):
    """/v1/embeddings: `embedding` is [reward]; /v1/classify: softmax over the labels, as SGLang
    (a one-label model's probs is [1.0]; a multi-output model's probs are its softmaxed outputs)."""
    rm, attrs = live["models"]["rm"], live["models"]["rm-attrs"]
    texts = rm.encoder.tokenizer.apply_chat_template(CONVS, tokenize=False)
    body = requests.post(f"{live['trusted']}/v1/embeddings", json={"model": "rm", "input": texts}).json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
    assert [d["embedding"][0] for d in body["data"]] == pytest.approx(rm.score(CONVS), abs=TOL)
    assert body["usage"]["prompt_tokens"] == sum(r.num_tokens for r in rm.score_detailed(CONVS))
    default = requests.post(f"{live['trusted']}/v1/embeddings", json={"model": "default", "input": texts[0]}).json()
    assert default["data"][0]["embedding"] == pytest.approx(rm.score(CONVS[:1]), abs=TOL)
    classify = requests.post(f"{live['trusted']}/v1/classify", json={"model": "rm", "input": texts[0]}).json()
    assert classify["data"][0]["probs"] == [1.0]
    attrs_text = attrs.encoder.tokenizer.apply_chat_template(CONVS[0], tokenize=False)
    multi = requests.post(f"{live['trusted']}/v1/classify", json={"model": "rm-attrs", "input": attrs_text}).json()
    values = attrs.score_detailed(CONVS[:1])[0].values
    assert sum(multi["data"][0]["probs"]) == pytest.approx(1.0) and multi["data"][0]["num_classes"] == len(values)


def test_errors_are_sglang_error_responses(live):
    empty = requests.post(f"{live['trusted']}/v1/embeddings", json={"model": "rm", "input": ""})
    assert empty.status_code == 400
    assert empty.json()["object"] == "error" and empty.json()["code"] == 400 and "empty" in empty.json()["message"]
    unknown = requests.post(f"{live['trusted']}/v1/embeddings", json={"model": "nope", "input": "x"})
    assert unknown.status_code == 404 and unknown.json()["param"] == "model"
    long = requests.post(f"{live['trusted']}/v1/embeddings", json={"model": "rm", "input": "hello " * 600})
    assert long.status_code == 400 and "limit of 512" in long.json()["message"]
