"""Text Embeddings Inference's /predict against the app (huggingface/text-embeddings-inference
@265deb2a router/src/http/types.rs `PredictRequest` / `PredictInput` / `Prediction`,
core/src/infer.rs `predict`, router/src/lib.rs `ErrorType`), with the one Python client found that
calls a TEI classifier, huggingface_hub's InferenceClient.text_classification
(huggingface/huggingface_hub@93e43f14 src/huggingface_hub/inference/_client.py: POST
{"inputs", "parameters"} to the given URL with `Authorization: Bearer <token>`), run unchanged."""

from __future__ import annotations

import pytest
from helpers import API_KEY, CONVERSATIONS, TOL

from cluster.core.results import sigmoid

requests = pytest.importorskip("requests")


def predict(live, body: dict) -> requests.Response:
    return requests.post(f"{live['keyed']}/predict", json=body, headers={"Authorization": f"Bearer {API_KEY}"})


def test_predict_single_pair_and_batch(live):
    rm = live["models"]["rm"]
    text = rm.encoder.tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    [single] = predict(live, {"inputs": text, "raw_scores": True}).json()
    assert single["label"] == "LABEL_0" and single["score"] == pytest.approx(rm.score([text])[0], abs=TOL)
    [activated] = predict(live, {"inputs": text}).json()  # TEI's default: sigmoid for one label
    assert activated["score"] == pytest.approx(sigmoid(rm.score([text])[0]), abs=1e-5)
    question, answer = CONVERSATIONS[0][0]["content"], CONVERSATIONS[0][1]["content"]
    [pair] = predict(live, {"inputs": [question, answer], "raw_scores": True}).json()  # a flat pair is one input
    assert pair["score"] == pytest.approx(rm.score([CONVERSATIONS[0][:2]])[0], abs=TOL)
    batch = predict(live, {"inputs": [[text], [question, answer]], "raw_scores": True}).json()
    assert [b[0]["score"] for b in batch] == pytest.approx([rm.score([text])[0], pair["score"]], abs=TOL)


def test_predict_multi_label_sorted_and_truncation(live):
    attrs = live["models"]["rm-attrs"]
    text = attrs.encoder.tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    preds = predict(live, {"model": "rm-attrs", "inputs": text}).json()
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0)  # softmax, best first
    too_long = predict(live, {"inputs": "hello " * 600})
    assert too_long.status_code == 413 and too_long.json()["error_type"] == "Validation"
    rm = live["models"]["rm"]
    long_text = "hello " * 600
    full = rm.encoder.encode_inputs([long_text])[0].ids  # the reference model's limit is larger: not cut
    assert len(full) > 512
    [kept_end] = predict(
        live, {"inputs": long_text, "truncate": True, "truncation_direction": "Left", "raw_scores": True}
    ).json()
    assert kept_end["score"] == pytest.approx(rm.runner.score_ids([full[:1] + full[-511:]])[0], abs=TOL)
    [kept_start] = predict(live, {"inputs": long_text, "truncate": True, "raw_scores": True}).json()  # Right
    assert kept_start["score"] == pytest.approx(rm.runner.score_ids([full[:512]])[0], abs=TOL)
    three = predict(live, {"inputs": ["a", "b", "c"]})
    assert three.status_code == 422 and "flat list" in three.json()["error"]


def test_huggingface_hub_inference_client(live, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests' offline mode blocks localhost
    rm = live["models"]["rm"]
    text = rm.encoder.tokenizer.apply_chat_template(CONVERSATIONS[1], tokenize=False)
    client = hub.InferenceClient(model=f"{live['keyed']}/predict", token=API_KEY)
    out = client.text_classification(text)
    # TEI answers one input with a flat list; this client keeps its first (the best) element
    top = out[0] if isinstance(out, list) else out
    assert top.label == "LABEL_0" and top.score == pytest.approx(sigmoid(rm.score([text])[0]), abs=1e-5)
