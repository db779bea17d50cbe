"""The HTTP front door in-process (no Ray): every route, auth, limits and errors through
`httpx.ASGITransport` over the request core, with the tiny models loaded in this process
(`local_service`, the `inproc` fixture) or with fake backends. The same app runs behind Serve
(tests/ray/test_serve.py checks the two answer alike)."""

from __future__ import annotations

import math
import os
import re

import pytest
from helpers import API_KEY, CONVERSATIONS, TOL, InProcessClient, conversations_for

from cluster import ModelSpec, load_model
from cluster.core.results import sigmoid

ITEMS = [
    {"prompt": "What is the capital of France?", "response_a": "Paris.", "response_b": "London."},
    {"prompt": "Add 2 and 3.", "response_a": "5", "response_b": "2 + 3 = 6, because addition."},
]


def test_models_and_health(inproc):
    c = inproc["client"]
    assert InProcessClient(inproc["app"]).get("/healthz").json() == {"status": "ok"}
    cards = {m["name"]: m for m in c.get("/v1/models").json()["data"]}
    rm = {k: v for k, v in cards["rm"].items() if k != "created"}
    assert rm == {
        "id": "rm",
        "object": "model",
        "owned_by": "scoring-cluster",
        "root": str(inproc["paths"][0]),
        "parent": None,
        "max_model_len": 512,
        "permission": [],
        "name": "rm",
        "kind": "reward",
        "max_length": 512,
        "default": True,
        "members": None,
        "shaping": None,
        "aliases": ["~/models/Skywork-Reward-Llama-3.1-8B-v0.2", "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"],
    }
    assert cards["rm-mix"]["members"] == {"rm": 3.0, "rm-gemma": 1.0} and cards["rm-mix"]["kind"] == "reward"
    assert cards["rm-gemma"]["default"] is False and cards["judge"]["kind"] == "critic"


def test_ensemble_with_shaping_combines_members_by_weight(inproc):
    """rm-mix = clip(((3 rm + 1 rm-gemma) / 4 - 0.5) / 2, -1, 1), on every reward route."""
    convs = conversations_for("gemma2")
    rm, gemma = inproc["models"]["rm"].score(convs), inproc["models"]["rm-gemma"].score(convs)
    expected = [min(1.0, max(-1.0, ((3 * a + b) / 4 - 0.5) / 2.0)) for a, b in zip(rm, gemma)]
    assert any(abs(e) < 1 for e in expected)  # not everything clipped: the mix itself is checked
    body = inproc["client"].post("/v1/rewards", json={"model": "rm-mix", "conversations": convs}).json()
    assert all(abs(x - y) <= TOL for x, y in zip(body["scores"], expected)) and body["raw_scores"] is None
    texts = [inproc["models"]["rm"].encoder.render(c, "t", add_generation_prompt=False) for c in convs[:2]]
    got = inproc["client"].post("/get_reward", json={"model": "rm-mix", "query": texts}).json()["rewards"]
    assert all(-1.0 <= x <= 1.0 for x in got)
    r = inproc["client"].post("/v1/judge", json={"model": "rm-mix", "items": ITEMS})
    assert r.status_code == 404 and "ensemble of reward models" in r.json()["error"]["message"]


@pytest.mark.parametrize("model", ["rm", "rm-gemma"])
def test_rewards_over_http_equal_load_model_score(inproc, model):
    convs = conversations_for("gemma2" if model == "rm-gemma" else "llama")
    r = inproc["client"].post("/v1/rewards", json={"model": model, "conversations": convs})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = inproc["models"][model].score_detailed(convs)
    assert body["model"] == model
    assert body["scores"] == pytest.approx([e.score for e in expected], abs=TOL)
    assert body["truncated"] == [e.truncated for e in expected]
    assert body["usage"]["prompt_tokens"] == sum(e.num_tokens for e in expected)


def test_default_model_and_pretemplated_text(inproc):
    rm = inproc["models"]["rm"]
    text = rm.encoder.tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    r = inproc["client"].post("/v1/rewards", json={"conversations": [text, CONVERSATIONS[1]]})
    assert r.json()["model"] == "rm"
    assert r.json()["scores"] == pytest.approx(rm.score([CONVERSATIONS[0], CONVERSATIONS[1]]), abs=TOL)


def test_truncation_is_reported(inproc):
    long_conv = [{"role": "user", "content": "Tell me. " * 200}, {"role": "assistant", "content": "Sure. " * 10}]
    r = inproc["client"].post("/v1/rewards", json={"conversations": [long_conv, CONVERSATIONS[1]]})
    spec = ModelSpec(name="rm", path=str(inproc["paths"][0]), kind="reward", max_length=512)
    expected = load_model(spec).score_detailed([long_conv, CONVERSATIONS[1]])
    assert r.json()["truncated"] == [True, False]
    assert r.json()["scores"] == pytest.approx([e.score for e in expected], abs=TOL)


def test_compare_with_a_reward_model(inproc):
    r = inproc["client"].post("/v1/compare", json={"items": ITEMS})
    assert r.status_code == 200, r.text
    expected = inproc["models"]["rm"].compare(ITEMS)
    for got, exp in zip(r.json()["results"], expected):
        assert got["prob_a"] == pytest.approx(exp.prob_a, abs=1e-5)
        assert got["reward_a"] == pytest.approx(exp.reward_a, abs=TOL)
        assert got["winner"] == exp.winner
    single = inproc["client"].post("/v1/compare", json=ITEMS[0]).json()["results"][0]
    assert single["prob_a"] == pytest.approx(expected[0].prob_a, abs=1e-5)
    assert single["prob_a"] == pytest.approx(sigmoid(single["reward_a"] - single["reward_b"]), abs=1e-9)


@pytest.mark.parametrize(("mode", "debias"), [("logits", False), ("logits", True), ("generate", False)])
def test_judge_over_http_equals_critic_judge(inproc, mode, debias):
    r = inproc["client"].post("/v1/judge", json={"items": ITEMS, "mode": mode, "debias": debias})
    assert r.status_code == 200, r.text
    expected = inproc["models"]["judge"].judge(ITEMS, mode=mode, debias=debias)
    for got, exp in zip(r.json()["results"], expected):
        assert got["winner"] == exp.winner
        assert got["prob_a"] == pytest.approx(exp.prob_a, abs=1e-5)
        assert got["text"] == exp.text


def test_compare_with_a_critic(inproc):
    r = inproc["client"].post("/v1/compare", json={"model": "judge", **ITEMS[1]})
    [exp] = inproc["models"]["judge"].judge([ITEMS[1]])
    assert r.json()["kind"] == "critic"
    assert r.json()["results"][0]["prob_a"] == pytest.approx(exp.prob_a, abs=1e-5)


# ---------------------------------------------------------------- protocol routes


def test_get_reward_as_openrlhf_sends_it(inproc):
    """openrlhf.utils.remote_rm_utils posts {"query", "prompts", "labels"} and reads "rewards"."""
    rm = inproc["models"]["rm"]
    queries = [rm.encoder.tokenizer.apply_chat_template(c, tokenize=False) for c in CONVERSATIONS[:3]]
    prompts = [rm.encoder.tokenizer.apply_chat_template(c[:-1], tokenize=False) for c in CONVERSATIONS[:3]]
    r = inproc["client"].post("/get_reward", json={"query": queries, "prompts": prompts, "labels": ["", "", ""]})
    assert r.status_code == 200, r.text
    assert r.json()["rewards"] == pytest.approx(rm.score(CONVERSATIONS[:3]), abs=TOL)
    assert r.json()["scores"] == r.json()["rewards"]
    assert set(r.json()["extra_logs"]) == {"rm_truncated"}


def test_classify_as_vllm_clients_send_it(inproc):
    """verl-style: {"model", "input": [...], "use_activation": false} (tests/clients/test_vllm.py and
    test_verl.py replay the clients' own code)."""
    rm = inproc["models"]["rm"]
    texts = [rm.encoder.tokenizer.apply_chat_template(c, tokenize=False) for c in CONVERSATIONS[:2]]
    raw = inproc["client"].post("/classify", json={"model": "rm", "input": texts, "use_activation": False})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    assert [d["num_classes"] for d in body["data"]] == [1, 1]
    expected = rm.score(CONVERSATIONS[:2])
    assert [d["probs"][0] for d in body["data"]] == pytest.approx(expected, abs=TOL)
    activated = inproc["client"].post("/classify", json={"model": "rm", "input": texts[0]}).json()
    assert activated["data"][0]["probs"][0] == pytest.approx(sigmoid(expected[0]), abs=1e-5)
    legacy = inproc["client"].post("/classify", json={"model": "rm", "input": texts[0], "activation": False}).json()
    assert legacy["data"][0]["probs"][0] == pytest.approx(expected[0], abs=TOL)
    chat = (
        inproc["client"]
        .post("/classify", json={"model": "rm", "messages": CONVERSATIONS[0], "use_activation": False})
        .json()
    )
    assert chat["data"][0]["probs"][0] == pytest.approx(expected[0], abs=TOL)
    assert body["usage"]["prompt_tokens"] > 0


def test_multi_output_model_over_http(inproc):
    """/v1/rewards: the chosen scalar plus every label; /classify: every label, as vLLM returns them
    (raw with use_activation false; softmax over several labels by default: vLLM's PoolerClassify in
    vllm/model_executor/layers/pooler/activations.py at vllm-project/vllm@1c713679497631bd9bf8b251c9ac93b6f6680326)."""
    from cluster.tiny import HELPSTEER2_LABELS

    expected = inproc["models"]["rm-attrs"].score_detailed(CONVERSATIONS[:3])
    body = inproc["client"].post("/v1/rewards", json={"model": "rm-attrs", "conversations": CONVERSATIONS[:3]}).json()
    assert body["labels"] == list(HELPSTEER2_LABELS)
    assert body["scores"] == pytest.approx([r.score for r in expected], abs=TOL)
    for got, want in zip(body["values"], expected):
        assert got == pytest.approx(want.values, abs=TOL) and got[1] == pytest.approx(want.score, abs=TOL)
    raw = (
        inproc["client"]
        .post("/classify", json={"model": "rm-attrs", "messages": CONVERSATIONS[0], "use_activation": False})
        .json()
    )
    [row] = raw["data"]
    assert row["num_classes"] == 5 and row["probs"] == pytest.approx(expected[0].values, abs=TOL)
    assert row["label"] == HELPSTEER2_LABELS[max(range(5), key=expected[0].values.__getitem__)]
    [soft] = inproc["client"].post("/classify", json={"model": "rm-attrs", "messages": CONVERSATIONS[0]}).json()["data"]
    exps = [math.exp(v) for v in expected[0].values]
    assert soft["probs"] == pytest.approx([e / sum(exps) for e in exps], abs=1e-5)
    # a one-label model keeps its old answer shape
    plain = inproc["client"].post("/v1/rewards", json={"model": "rm", "conversations": CONVERSATIONS[:1]}).json()
    assert plain["values"] is None and plain["labels"] is None


def test_encoder_reward_model_over_http(inproc):
    """BERT-style: the (question, answer) pair and its token types cross the tokenizer deployment and
    the replica as they do in-process."""
    convs = [c for c in CONVERSATIONS if len(c) == 2]
    body = inproc["client"].post("/v1/rewards", json={"model": "rm-bert", "conversations": convs}).json()
    assert body["scores"] == pytest.approx(inproc["models"]["rm-bert"].score(convs), abs=TOL)
    assert any(body["truncated"])  # max_length 64: the long answer is cut from the left
    bad = inproc["client"].post("/v1/rewards", json={"model": "rm-bert", "conversations": [CONVERSATIONS[2]]})
    assert bad.status_code == 422 and "no chat template" in bad.json()["error"]["message"]


# ---------------------------------------------------------------- errors, limits, auth


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "fragment"),
    [
        ("/v1/rewards", {"conversations": [[{"role": "bot", "content": "x"}]]}, 422, "invalid_input", "role"),
        (
            "/v1/rewards",
            {"conversations": [[{"role": "user", "content": "x"}]]},
            422,
            "invalid_input",
            "last message must be the assistant",
        ),
        ("/v1/rewards", {"conversations": []}, 422, "invalid_input", "conversations"),
        ("/v1/rewards", {"conversation": [CONVERSATIONS[0]]}, 422, "invalid_input", "conversation"),
        ("/v1/rewards", {"model": "nope", "conversations": [CONVERSATIONS[0]]}, 404, "unknown_model", "nope"),
        ("/v1/rewards", {"model": "judge", "conversations": [CONVERSATIONS[0]]}, 422, "invalid_input", "is a critic"),
        ("/v1/rewards", {"conversations": [CONVERSATIONS[1]] * 65}, 413, "request_too_large", "limit is 64"),
        ("/v1/judge", {"items": ITEMS, "mode": "sample"}, 422, "invalid_input", "mode"),
        ("/v1/compare", {"prompt": "q"}, 422, "invalid_input", "response_a"),
    ],
)
def test_errors_are_mapped_with_a_request_id_and_no_traceback(inproc, path, body, status, code, fragment):
    r = inproc["client"].post(path, json=body, headers={"x-request-id": "req-42"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and fragment in err["message"]
    assert err["request_id"] == "req-42"  # the proxy's id (Serve sends it as x-request-id)
    assert "Traceback" not in r.text and 'File "' not in r.text


def test_body_over_the_byte_limit_is_413(inproc):
    big = {"conversations": [[{"role": "user", "content": "x" * 250_000}, {"role": "assistant", "content": "y"}]]}
    r = inproc["client"].post("/v1/rewards", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_malformed_json_is_422(inproc):
    r = inproc["client"].post("/v1/rewards", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"


def test_api_keys(inproc):
    anonymous, wrong = InProcessClient(inproc["app"]), InProcessClient(inproc["app"], {"Authorization": "Bearer nope"})
    body = {"conversations": [CONVERSATIONS[0]]}
    assert anonymous.post("/v1/rewards", json=body).status_code == 401
    refused = wrong.post("/v1/rewards", json=body)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert anonymous.get("/v1/models").status_code == 401
    assert anonymous.get("/healthz").status_code == 200
    # auth comes before parsing: an unauthenticated caller learns nothing about the body
    assert anonymous.post("/v1/rewards", content=b"{bad").status_code == 401


@pytest.mark.parametrize(
    ("err", "status", "code", "message"),
    [
        ("model_failure", 500, "model_failure", "model 'rm' failed on a batch"),
        ("unexpected", 500, "internal_error", "internal error; quote the request id"),
        ("backpressure", 503, "overloaded", "queue is full"),
    ],
)
def test_failures_map_to_500_and_503_without_internals(err, status, code, message):
    import json

    from ray.serve.exceptions import BackPressureError

    from cluster.core.errors import ModelFailure
    from cluster.http.app import error_response

    exc = {
        "model_failure": ModelFailure("model 'rm' failed on a batch: RuntimeError: CUDA error"),
        "unexpected": KeyError("secret internal detail"),
        "backpressure": BackPressureError(num_queued_requests=5, max_queued_requests=4),
    }[err]
    response = error_response(exc, "req-123")
    body = json.loads(response.body)
    assert response.status_code == status
    assert body == {"error": {"code": code, "message": body["error"]["message"], "request_id": "req-123"}}
    assert message in body["error"]["message"]
    assert "secret internal detail" not in response.body.decode() and "Traceback" not in response.body.decode()
    if status == 503:
        assert response.headers["retry-after"] == "1"


def test_classify_activation_follows_vllm():
    """vllm-project/vllm@1c713679 activations.py: regression -> identity, multi-label -> sigmoid,
    one label -> sigmoid, several -> softmax."""
    from cluster.http.common import classify_activation

    values = [2.0, -1.0, 0.5]
    assert classify_activation(values, "regression") == values
    assert classify_activation(values, "multi_label_classification") == pytest.approx([sigmoid(v) for v in values])
    assert classify_activation([2.0], None) == pytest.approx([sigmoid(2.0)])
    exps = [math.exp(v) for v in values]
    assert classify_activation(values, "single_label_classification") == pytest.approx([e / sum(exps) for e in exps])
    assert classify_activation(values, None) == pytest.approx([e / sum(exps) for e in exps])


# ---------------------------------------------------------------- limits and body handling


def test_a_body_without_content_length_is_cut_off_at_the_limit(inproc):
    """A chunked body is read only up to max_request_bytes (200,000 here), then refused."""
    sent = []

    async def chunks():
        for _ in range(100):  # 100 x 10 kB = 1 MB offered
            sent.append(1)
            yield b"x" * 10_000

    r = inproc["client"].post("/v1/rewards", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert len(sent) <= 21  # at most limit + one chunk was read


def test_a_json_body_is_read_as_json_whatever_its_content_type(inproc):
    """curl -d sends application/x-www-form-urlencoded; the body is still our JSON."""
    body = b'{"conversations": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]}'
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = inproc["client"].post("/v1/rewards", content=body, headers=form)
    assert r.status_code == 200, r.text
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert r.json()["scores"] == pytest.approx(inproc["models"]["rm"].score([conv]), abs=TOL)


def test_openapi_documents_every_routes_body(inproc):
    """With `docs: true` (off by default), behind the key as every route."""
    from cluster.http.app import create_app

    app = create_app(inproc["service"], api_keys=[API_KEY], docs=True)
    assert InProcessClient(app).get("/openapi.json").status_code == 401
    spec = InProcessClient(app, {"Authorization": f"Bearer {API_KEY}"}).get("/openapi.json").json()
    posts = {path: ops["post"] for path, ops in spec["paths"].items() if "post" in ops}
    assert set(posts) == {
        "/v1/rewards",
        "/v1/compare",
        "/v1/judge",
        "/get_reward",
        "/classify",
        "/pooling",
        "/score",
        "/rerank",
        "/tokenize",
        "/v1/embeddings",
        "/v1/classify",
        "/predict",
        "/v1/step_rewards",
        "/v1/rate",
        "/v1/chat/completions",
        "/generative_scoring",
        "/slime/reward",
    }
    for path, op in posts.items():
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.rsplit("/", 1)[-1] in spec["components"]["schemas"], path
        assert "200" in op["responses"] and "$ref" in str(op["responses"]["200"]), path
    judge = spec["components"]["schemas"]["JudgeRequest"]["properties"]["mode"]
    assert set(judge.get("enum", [])) == {"logits", "generate"}


# ---------------------------------------------------------------- the request core with fakes


class FakeEncoder:
    """Item i of a part -> i + 1 repeated `length` times; "bad" inputs are refused as a real
    encoder refuses them. Records every call."""

    def __init__(self, length: int = 5, truncated=lambda model, i: False):
        self.length, self.truncated, self.calls = length, truncated, []

    def encode(self, parts):
        from cluster.core.errors import InvalidInput
        from cluster.core.inputs import Encoded

        self.calls.append(parts)
        out = []
        for part in parts:
            if "bad" in part.inputs:
                out.append(InvalidInput(f"{part.what}[{part.inputs.index('bad')}]: bad input"))
                continue
            out.append([Encoded([i + 1] * self.length, self.truncated(part.model, i)) for i in range(len(part.inputs))])
        return out


class FakeBackend:
    """Outputs from `raw[model][item]`; `fail` is what every call meets instead. Records calls."""

    def __init__(self, raw=None, fail=None, call_tokens=None):
        self.raw, self.fail, self.budget, self.calls = raw or {}, fail, call_tokens, []

    def call_tokens(self, model):
        return self.budget

    def run(self, calls):
        self.calls.append(calls)
        if self.fail is not None:
            return [self.fail for _ in calls]
        return [[(self.raw[c.model][s[0] - 1], None) for s in c.seqs] for c in calls]

    def head(self, model):
        return {"labels": ["LABEL_0"], "problem_type": None}


def fake_service(backend, encoder=None, **config):
    from cluster.core.config import AppConfig
    from cluster.core.service import ScoringService

    config = AppConfig.parse(
        {
            "models": [{"name": "a", "path": "x", "kind": "reward"}, {"name": "b", "path": "y", "kind": "reward"}],
            **config,
        }
    )
    return ScoringService(
        config.models,
        encoder or FakeEncoder(),
        backend,
        ensembles=config.ensembles,
        max_items=config.max_items_per_request,
    )


def test_model_shaping_returns_shaped_and_raw_scores():
    service = fake_service(
        FakeBackend({"a": [2.0, 10.0], "b": [0.0, 1.0]}),
        FakeEncoder(truncated=lambda model, i: model == "b" and i == 1),
        models=[
            {"name": "a", "path": "x", "kind": "reward", "shaping": {"normalize": {"mean": 2.0, "std": 4.0}}},
            {"name": "b", "path": "y", "kind": "reward"},
        ],
        ensembles=[
            {"name": "mix", "members": [{"model": "a"}, {"model": "b", "weight": 3}], "shaping": {"clip": [-1.0, 1.0]}}
        ],
    )
    shaped = service.one(service.rewards_job(service.resolve("a", ("reward",)), ["x", "y"]))
    assert shaped.scores == [0.0, 2.0] and shaped.raw == [2.0, 10.0] and shaped.tokens == 10
    mixed = service.one(service.rewards_job(service.resolve("mix", ("reward",)), ["x", "y"]))
    assert mixed.scores == [0.0, min(1.0, (2.0 + 3 * 1.0) / 4)] and mixed.raw is None  # a shaped, weights, clip
    assert mixed.truncated == [False, True] and mixed.tokens == 20 and mixed.num_tokens == [10, 10]


def test_concurrent_jobs_share_one_encoder_call_and_budgeted_calls_in_input_order():
    """The flow the Serve ingress runs for gathered requests: one encoder call for every job, the
    sequences of each model planned into calls under the backend's per-call budget (12 tokens:
    two 5-token items per call), each job's results back in its own input order."""
    import asyncio

    encoder, backend = FakeEncoder(), FakeBackend({"a": [1.0, 2.0, 3.0], "b": [10.0, 20.0, 30.0]}, call_tokens=12)
    service = fake_service(backend, encoder)
    jobs = [service.rewards_job(service.resolve(m, ("reward",)), ["x"] * n) for m, n in (("a", 3), ("b", 2), ("a", 1))]
    results = asyncio.run(service.arun(jobs))
    assert [r.scores for r in results] == [[1.0, 2.0, 3.0], [10.0, 20.0], [1.0]]
    assert len(encoder.calls) == 1 and len(encoder.calls[0]) == 3  # one call, every part
    [calls] = backend.calls  # one Run: every call at once
    assert sorted((c.model, len(c.seqs)) for c in calls) == [("a", 2), ("a", 2), ("b", 2)]


def test_one_jobs_bad_input_or_failed_call_fails_that_job_alone():
    from cluster.core.errors import InvalidInput, ModelFailure

    service = fake_service(FakeBackend({"a": [1.0, 2.0], "b": [5.0]}))
    jobs = [
        service.rewards_job(service.resolve("a", ("reward",)), ["x", "bad"]),
        service.rewards_job(service.resolve("b", ("reward",)), ["x"]),
    ]
    bad, good = service.run(jobs)
    assert isinstance(bad, InvalidInput) and "conversations[1]: bad input" in bad.message
    assert good.scores == [5.0]
    failing = fake_service(FakeBackend(fail=ModelFailure("model 'a' failed on a batch: boom")))
    with pytest.raises(ModelFailure, match="boom"):
        failing.one(failing.rewards_job(failing.resolve("a", ("reward",)), ["x"]))


@pytest.mark.parametrize(
    ("fail", "status", "code"),
    [("model_failure", 500, "model_failure"), ("overloaded", 503, "overloaded"), ("unexpected", 500, "internal_error")],
)
def test_backend_failures_reach_clients_as_mapped_errors(fail, status, code):
    """Through the routes: a failing backend's error is the documented body, never a traceback."""
    from cluster.core.errors import ModelFailure, Overloaded
    from cluster.http.app import create_app

    err = {
        "model_failure": ModelFailure("model 'a' ran out of memory"),
        "overloaded": Overloaded("queue is full"),
        "unexpected": KeyError("secret internal detail"),
    }[fail]
    app = create_app(fake_service(FakeBackend(fail=err)))
    r = InProcessClient(app).post("/v1/rewards", json={"conversations": ["x"]})
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert "secret internal detail" not in r.text and "Traceback" not in r.text
    assert (r.headers.get("retry-after") == "1") == (status == 503)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "body: Invalid JSON: EOF while parsing"),
        (b'{"conversations": 5}', "conversations: Input should be a valid array"),
        (b"[1]", "body: Input should be an object"),
    ],
)
def test_body_errors_read_as_the_schema_states_them_for_json(inproc, raw, message):
    r = inproc["client"].post("/v1/rewards", content=raw)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith(message), r.text


BAD = {"role": "bot", "content": "hi"}


@pytest.mark.parametrize(
    "convs",
    [
        [CONVERSATIONS[0], [BAD]],  # an unknown role
        [CONVERSATIONS[0], [CONVERSATIONS[1][0], {"role": "assistant", "content": 5}]],  # content not a string
        [CONVERSATIONS[0], [{"role": "user", "content": "q"}, {"role": "assistant"}]],  # no content
        [CONVERSATIONS[0], []],  # an empty conversation
        [CONVERSATIONS[0], 7],  # not a list
        [CONVERSATIONS[0], [CONVERSATIONS[1][0], "a"]],  # a message not an object
        [CONVERSATIONS[1][:1]],  # no response to score
        [[CONVERSATIONS[1][0], {"role": "assistant", "content": "a\ud800"}]],
    ],  # not valid Unicode
    ids=["role", "content-type", "no-content", "empty", "not-a-list", "not-an-object", "no-response", "surrogate"],
)
def test_a_bad_conversation_is_named_alike_over_http_and_in_process(inproc, convs):
    """One wording whatever the door: the route's 422 is the message `load_model(...).score` raises
    (`conversations[1][0].role: unknown role 'bot' ...`), never pydantic's `conversations.1.0.role`."""
    import json

    from cluster.core.errors import InvalidInput

    with pytest.raises(InvalidInput) as in_process:
        inproc["models"]["rm"].score(convs)
    r = inproc["client"].post("/v1/rewards", content=json.dumps({"conversations": convs}))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == in_process.value.message


@pytest.mark.parametrize(
    ("items", "extra"),
    [
        ([ITEMS[0], {"prompt": "q", "response_a": "a"}], {}),
        ([ITEMS[0], {"prompt": 1, "response_a": "a", "response_b": "b"}], {}),
        ([{**ITEMS[0], "response_c": "c"}], {}),
        (["not an item"], {}),
        (ITEMS, {"mode": "sample"}),
    ],
    ids=["missing", "not-a-string", "unknown-field", "not-an-object", "mode"],
)
def test_a_bad_judge_item_is_named_alike_over_http_and_in_process(inproc, items, extra):
    from cluster.core.errors import InvalidInput

    with pytest.raises(InvalidInput) as in_process:
        inproc["models"]["judge"].judge(items, **extra)
    for path in ("/v1/judge", "/v1/compare") if not extra else ("/v1/judge",):
        r = inproc["client"].post(path, json={"model": "judge", "items": items, **extra})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["message"] == in_process.value.message, path
    if not extra:  # a reward model's comparison checks its items the same way
        with pytest.raises(InvalidInput) as rm_in_process:
            inproc["models"]["rm"].compare(items)
        assert rm_in_process.value.message == in_process.value.message


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/v1/rewards",
            {"conversations": [CONVERSATIONS[0], [{**CONVERSATIONS[1][0], "name": "x"}, CONVERSATIONS[1][1]]]},
            "conversations[1][0]: unknown field(s) ['name'] (expected role, content)",
        ),
        ("/get_reward", {"query": ["a", 5]}, "query[1]: Input should be a valid string"),
        (
            "/classify",
            {"model": "rm", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]},
            "messages[1].content: Input should be a valid string",
        ),
        ("/v1/embeddings", {"model": "rm", "input": [[1, "x"]]}, "input[0][1]: Input should be a valid integer"),
        ("/predict", {"inputs": [["q", "a", "b"]]}, "inputs[0]: each input is [string] or a pair"),
    ],
)
def test_schema_errors_name_locations_with_indices_in_brackets(inproc, path, body, message):
    """What the schemas alone check is located as the in-process checks write it, on our routes and
    the other protocols' (each in its own error shape)."""
    r = inproc["client"].post(path, json=body)
    assert r.status_code in (400, 422), r.text
    text = r.json()["error"] if path == "/predict" else (r.json().get("message") or r.json()["error"]["message"])
    assert message in text, text
    assert not re.search(r"[a-z_]\.\d", text), text  # no pydantic-style `field.0`


def test_error_locations_render_indices_in_brackets():
    from cluster.http.app import location

    assert location(("conversations", 1, "list[Message]", 0, "role")) == "conversations[1][0].role"
    assert location(("input", "list[list[int]]", 0, 1)) == "input[0][1]"
    assert location(("items", 2, "prompt")) == "items[2].prompt"
    assert location(("str",)) == "" and location(()) == ""


def test_from_ray_is_the_one_reading_of_rays_wrappers():
    from ray.exceptions import RayActorError, RayTaskError
    from ray.serve.exceptions import BackPressureError

    from cluster.core.errors import InvalidInput, Overloaded, from_ray

    bad = from_ray(RayTaskError("score", "Traceback (most recent call last): ...", InvalidInput("items[0]: bad")))
    assert isinstance(bad, InvalidInput) and bad.message == "items[0]: bad"
    other = from_ray(RayTaskError("score", "Traceback (most recent call last): ...", KeyError("k")))
    assert isinstance(other, KeyError)  # the cause, not Ray's wrapper with its traceback text
    lost = from_ray(RayActorError(), "rm")
    assert isinstance(lost, Overloaded) and lost.message == "a replica of model 'rm' became unavailable; retry"
    full = from_ray(BackPressureError(num_queued_requests=5, max_queued_requests=4))
    assert isinstance(full, Overloaded) and "queue is full" in full.message
    assert not isinstance(from_ray(RayActorError(), transient=False), Overloaded)  # the pipeline's reading
    text = RuntimeError("Failed on a task: cluster.core.errors.InvalidInput: rows.jsonl row 3: prompt: missing")
    assert from_ray(text).message == "rows.jsonl row 3: prompt: missing"  # Ray Data keeps only the text


# ---------------------------------------------------------------- auth for clients that cannot set a header


def test_api_key_in_the_query_string_or_as_basic_auth_and_never_logged(inproc, caplog):
    import base64

    anonymous = InProcessClient(inproc["app"])
    body = {"conversations": [CONVERSATIONS[0]]}
    from helpers import API_KEY

    assert anonymous.post(f"/v1/rewards?api_key={API_KEY}", json=body).status_code == 200
    basic = base64.b64encode(f"openrlhf:{API_KEY}".encode()).decode()
    assert anonymous.post("/v1/rewards", json=body, headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert anonymous.post("/v1/rewards?api_key=wrong", json=body).status_code == 401
    assert anonymous.post("/v1/rewards", json=body, headers={"Authorization": "Basic !!"}).status_code == 401
    # a placeholder header (the OpenAI SDK's "EMPTY") does not hide a right key in the URL
    placeholder = {"Authorization": "Bearer EMPTY"}
    assert anonymous.post(f"/v1/rewards?api_key={API_KEY}", json=body, headers=placeholder).status_code == 200
    # the key leaves the URL before any route sees it: an error naming the URL does not carry it
    with caplog.at_level("DEBUG"):
        r = anonymous.post(f"/v1/nothing?x=1&api_key={API_KEY}", json=body)
    ours = "\n".join(rec.getMessage() for rec in caplog.records if not rec.name.startswith("httpx"))  # the client's own
    assert r.status_code == 404 and API_KEY not in r.text and API_KEY not in ours


def test_routes_never_see_the_url_key():
    import asyncio

    import httpx

    from cluster.http.app import Guard

    seen = []

    async def route(scope, receive, send):
        seen.append(scope["query_string"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = Guard(route, api_keys=["k3y"], max_request_bytes=1000)

    async def get(query: str) -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as c:
            return (await c.get("/x?" + query)).status_code

    assert asyncio.run(get("a=1&api_key=k3y&b=2")) == 200 and seen == [b"a=1&b=2"]
    assert asyncio.run(get("api%5Fkey=k3y")) == 200 and seen[-1] == b""  # the name percent-encoded
    assert asyncio.run(get("xapi_key=k3y")) == 401 and len(seen) == 2


def test_key_stripped_from_the_query_string():
    from cluster.http.app import take_query_key

    scope = {"query_string": b"a=1&api_key=s3cr%2Bt&b=2"}
    assert take_query_key(scope) == b"s3cr+t" and scope["query_string"] == b"a=1&b=2"
    scope = {"query_string": b"a=1"}
    assert take_query_key(scope) is None and scope["query_string"] == b"a=1"


def test_trusted_networks_need_no_key(inproc):
    import asyncio

    import httpx

    from cluster.http.app import create_app

    app = create_app(inproc["service"], api_keys=["k"], trusted_networks=["10.0.0.0/8", "::1"])

    async def status(client_ip: str) -> int:
        transport = httpx.ASGITransport(app=app, client=(client_ip, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return (await c.get("/v1/models")).status_code

    assert [asyncio.run(status(ip)) for ip in ("10.1.2.3", "::1", "11.0.0.1", "::ffff:10.0.0.7")] == [
        200,
        200,
        401,
        200,
    ]

    async def forwarded(client_ip: str) -> int:  # Serve's uvicorn takes the client address from X-Forwarded-For
        transport = httpx.ASGITransport(app=app, client=(client_ip, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return (await c.get("/v1/models", headers={"X-Forwarded-For": client_ip})).status_code

    assert asyncio.run(forwarded("10.1.2.3")) == 401  # a header anyone can write is never trusted
    from cluster.core.errors import ConfigError

    with pytest.raises(ConfigError, match="trusted_networks without api_keys"):
        create_app(inproc["service"], trusted_networks=["10.0.0.0/8"])


def test_empty_or_blank_api_keys_are_refused_at_config():
    from cluster.core.config import AppConfig
    from cluster.core.errors import ConfigError

    base = {"models": [{"name": "rm", "path": "/m", "kind": "reward"}]}
    for keys in ([""], ["  "]):
        with pytest.raises(ConfigError, match="api_keys"):
            AppConfig.parse({**base, "api_keys": keys})
    with pytest.raises(ConfigError, match="64 hex digits"):
        AppConfig.parse({**base, "api_keys": ["sha256:abc"]})
    with pytest.raises(ConfigError, match="not a network"):
        AppConfig.parse({**base, "trusted_networks": ["10.0.0.0/33"]})


def test_unknown_routes_and_methods_answer_the_documented_error(inproc):
    r = inproc["client"].get("/v2/whatever")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = inproc["client"].get("/v1/rewards")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


# ---------------------------------------------------------------- model names: aliases and paths


def test_a_model_answers_to_its_aliases_and_its_path(inproc, tmp_path):
    import os

    c = inproc["client"]
    rm_path = str(inproc["paths"][0])
    expected = inproc["models"]["rm"].score(CONVERSATIONS[:1])
    for name in (
        "rm",
        "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2",
        "~/models/Skywork-Reward-Llama-3.1-8B-v0.2",
        rm_path,
        rm_path + "/",
        os.path.join(rm_path, "..", os.path.basename(rm_path)),
    ):
        r = c.post("/v1/rewards", json={"model": name, "conversations": CONVERSATIONS[:1]})
        assert r.status_code == 200, (name, r.text)
        assert r.json()["model"] == "rm" and r.json()["scores"] == pytest.approx(expected, abs=TOL)
    huge = c.post("/v1/rewards", json={"model": "x" * 5000, "conversations": CONVERSATIONS[:1]})
    assert huge.status_code == 404 and len(huge.json()["error"]["message"]) < 400  # the name is not echoed whole


def test_path_names_follow_the_route_kind_and_ambiguity_is_refused(tmp_path):
    from cluster.core.config import AppConfig
    from cluster.core.errors import UnknownModel
    from cluster.core.service import ScoringService

    home = os.path.expanduser("~")
    config = AppConfig.parse(
        {
            "models": [
                {"name": "a", "path": "~/models/same", "kind": "reward"},
                {"name": "judge", "path": "~/models/same", "kind": "critic"},
                {"name": "b", "path": "/data/twin", "kind": "reward"},
                {"name": "c", "path": "/data/twin", "kind": "reward"},
            ]
        }
    )
    service = ScoringService(config.models, None, None)
    assert service.resolve(f"{home}/models/same", ("reward",)).name == "a"
    assert service.resolve("~/models/same/", ("critic",)).name == "judge"
    with pytest.raises(UnknownModel, match="several served models"):
        service.resolve("/data/twin", ("reward",))


def test_request_truncation_options(reward_dir):
    """A request's own cut (vLLM's truncate_prompt_tokens) applies whatever the spec's truncation;
    0 is refused; "none" has no limit (/tokenize)."""
    from transformers import AutoTokenizer

    from cluster.core.errors import InputTooLong, InvalidInput
    from cluster.core.inputs import EncodeOptions
    from cluster.engine.encoders import ChatEncoder

    tok = AutoTokenizer.from_pretrained(reward_dir("llama"))
    encoder = ChatEncoder(tok, max_length=16, truncation="error")
    text = "hello " * 40
    with pytest.raises(InputTooLong):
        encoder.encode_inputs([text])
    [cut] = encoder.encode_inputs([text], options=EncodeOptions(truncate=5))
    full = ChatEncoder(tok, max_length=4096, truncation="left").encode_inputs([text])[0].ids
    assert cut.truncated and cut.ids == full[:1] + full[-4:]
    [right] = encoder.encode_inputs([text], options=EncodeOptions(truncate="right"))
    assert right.ids == full[:16]
    [whole] = encoder.encode_inputs([text], options=EncodeOptions(truncate="none"))
    assert whole.ids == full and not whole.truncated
    with pytest.raises(InvalidInput, match="at least 1"):
        encoder.encode_inputs([text], options=EncodeOptions(truncate=0))


def test_tokenize_has_no_limit_unpacks_pairs_and_refuses_ensembles(inproc):
    c = inproc["client"]
    long = c.post("/tokenize", json={"model": "rm", "prompt": "hello " * 600})
    assert long.status_code == 200 and long.json()["count"] > long.json()["max_model_len"] == 512
    bert = c.post("/tokenize", json={"model": "rm-bert", "messages": CONVERSATIONS[3][:2]}).json()
    tok = inproc["models"]["rm-bert"].encoder.tokenizer
    pair = tok(CONVERSATIONS[3][0]["content"], CONVERSATIONS[3][1]["content"])["input_ids"]
    assert bert["tokens"] == pair
    mix = c.post("/tokenize", json={"model": "rm-mix", "prompt": "x"})
    assert mix.status_code == 400 and "ensemble" in mix.json()["error"]["message"]
    zero = c.post("/classify", json={"model": "rm", "input": "x", "truncate_prompt_tokens": 0})
    assert zero.status_code == 400
    rid = c.post("/classify", json={"text": ["a", "b", "c"], "rid": ["x", "y"]})
    assert rid.status_code == 400 and "rid" in rid.json()["error"]["message"]
