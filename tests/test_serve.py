"""The Serve app on a local Ray cluster with two fake GPUs: HTTP scores equal in-process scores,
replicas pin one per GPU, concurrent requests batch together, every error code, auth, reconfigure,
and the OpenRLHF / vLLM(verl) protocol routes driven with the bodies those clients send."""

from __future__ import annotations

import asyncio
import math
import os
import time

import httpx
import pytest
from conftest import API_KEY, CONVERSATIONS, app_args, conversations_for, deploy

from cluster import ModelSpec, load_model
from cluster.core.results import sigmoid

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

ITEMS = [
    {"prompt": "What is the capital of France?", "response_a": "Paris.", "response_b": "London."},
    {"prompt": "Add 2 and 3.", "response_a": "5", "response_b": "2 + 3 = 6, because addition."},
]


def replica_stats(deployment: str, min_distinct: int = 1, tries: int = 60) -> dict[str, dict]:
    handle = serve.get_deployment_handle(deployment, app_name="scoring")
    seen: dict[str, dict] = {}
    for _ in range(tries):
        stats = handle.get_stats.remote().result()
        seen[stats["replica"]] = stats
        if len(seen) >= min_distinct:
            break
    return seen


# ---------------------------------------------------------------- scores equal in-process scores


def test_models_and_health(served):
    c = served["client"]
    assert httpx.get(f"http://127.0.0.1:{served['port']}/healthz").json() == {"status": "ok"}
    cards = {m["name"]: m for m in c.get("/v1/models").json()["data"]}
    assert cards["rm"] == {"name": "rm", "kind": "reward", "max_length": 512, "default": True, "members": None,
                           "shaping": None}
    assert cards["rm-mix"]["members"] == {"rm": 3.0, "rm-gemma": 1.0} and cards["rm-mix"]["kind"] == "reward"
    assert cards["rm-gemma"]["default"] is False and cards["judge"]["kind"] == "critic"


def test_ensemble_with_shaping_combines_members_by_weight(served):
    """rm-mix = clip(((3 rm + 1 rm-gemma) / 4 - 0.5) / 2, -1, 1), on every reward route."""
    convs = conversations_for("gemma2")
    rm, gemma = served["models"]["rm"].score(convs), served["models"]["rm-gemma"].score(convs)
    expected = [min(1.0, max(-1.0, ((3 * a + b) / 4 - 0.5) / 2.0)) for a, b in zip(rm, gemma)]
    assert any(abs(e) < 1 for e in expected)  # not everything clipped: the mix itself is checked
    body = served["client"].post("/v1/rewards", json={"model": "rm-mix", "conversations": convs}).json()
    assert all(abs(x - y) <= 1e-4 for x, y in zip(body["scores"], expected)) and body["raw_scores"] is None
    texts = [served["models"]["rm"].encoder.render(c, "t", add_generation_prompt=False) for c in convs[:2]]
    got = served["client"].post("/get_reward", json={"model": "rm-mix", "query": texts}).json()["rewards"]
    assert all(-1.0 <= x <= 1.0 for x in got)
    r = served["client"].post("/v1/judge", json={"model": "rm-mix", "items": ITEMS})
    assert r.status_code == 404 and "ensemble of reward models" in r.json()["error"]["message"]


@pytest.mark.parametrize("model", ["rm", "rm-gemma"])
def test_rewards_over_http_equal_load_model_score(served, model):
    convs = conversations_for("gemma2" if model == "rm-gemma" else "llama")
    r = served["client"].post("/v1/rewards", json={"model": model, "conversations": convs})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = served["models"][model].score_detailed(convs)
    assert body["model"] == model
    assert body["scores"] == pytest.approx([e.score for e in expected], abs=1e-4)
    assert body["truncated"] == [e.truncated for e in expected]
    assert body["usage"]["prompt_tokens"] == sum(e.num_tokens for e in expected)


def test_default_model_and_pretemplated_text(served):
    rm = served["models"]["rm"]
    text = rm.encoder.tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    r = served["client"].post("/v1/rewards", json={"conversations": [text, CONVERSATIONS[1]]})
    assert r.json()["model"] == "rm"
    assert r.json()["scores"] == pytest.approx(rm.score([CONVERSATIONS[0], CONVERSATIONS[1]]), abs=1e-4)


def test_truncation_is_reported(served):
    long_conv = [{"role": "user", "content": "Tell me. " * 200}, {"role": "assistant", "content": "Sure. " * 10}]
    r = served["client"].post("/v1/rewards", json={"conversations": [long_conv, CONVERSATIONS[1]]})
    spec = ModelSpec(name="rm", path=str(served["paths"][0]), kind="reward", max_length=512)
    expected = load_model(spec).score_detailed([long_conv, CONVERSATIONS[1]])
    assert r.json()["truncated"] == [True, False]
    assert r.json()["scores"] == pytest.approx([e.score for e in expected], abs=1e-4)


def test_compare_with_a_reward_model(served):
    r = served["client"].post("/v1/compare", json={"items": ITEMS})
    assert r.status_code == 200, r.text
    expected = served["models"]["rm"].compare(ITEMS)
    for got, exp in zip(r.json()["results"], expected):
        assert got["prob_a"] == pytest.approx(exp.prob_a, abs=1e-5)
        assert got["reward_a"] == pytest.approx(exp.reward_a, abs=1e-4)
        assert got["winner"] == exp.winner
    single = served["client"].post("/v1/compare", json=ITEMS[0]).json()["results"][0]
    assert single["prob_a"] == pytest.approx(expected[0].prob_a, abs=1e-5)
    assert single["prob_a"] == pytest.approx(sigmoid(single["reward_a"] - single["reward_b"]), abs=1e-9)


@pytest.mark.parametrize(("mode", "debias"), [("logits", False), ("logits", True), ("generate", False)])
def test_judge_over_http_equals_critic_judge(served, mode, debias):
    r = served["client"].post("/v1/judge", json={"items": ITEMS, "mode": mode, "debias": debias})
    assert r.status_code == 200, r.text
    expected = served["models"]["judge"].judge(ITEMS, mode=mode, debias=debias)
    for got, exp in zip(r.json()["results"], expected):
        assert got["winner"] == exp.winner
        assert got["prob_a"] == pytest.approx(exp.prob_a, abs=1e-5)
        assert got["text"] == exp.text


def test_compare_with_a_critic(served):
    r = served["client"].post("/v1/compare", json={"model": "judge", **ITEMS[1]})
    [exp] = served["models"]["judge"].judge([ITEMS[1]])
    assert r.json()["kind"] == "critic"
    assert r.json()["results"][0]["prob_a"] == pytest.approx(exp.prob_a, abs=1e-5)


# ---------------------------------------------------------------- protocol routes


def test_get_reward_as_openrlhf_sends_it(served):
    """openrlhf.utils.remote_rm_utils posts {"query", "prompts", "labels"} and reads "rewards"."""
    rm = served["models"]["rm"]
    queries = [rm.encoder.tokenizer.apply_chat_template(c, tokenize=False) for c in CONVERSATIONS[:3]]
    prompts = [rm.encoder.tokenizer.apply_chat_template(c[:-1], tokenize=False) for c in CONVERSATIONS[:3]]
    r = served["client"].post("/get_reward", json={"query": queries, "prompts": prompts, "labels": ["", "", ""]})
    assert r.status_code == 200, r.text
    assert r.json()["rewards"] == pytest.approx(rm.score(CONVERSATIONS[:3]), abs=1e-4)
    assert r.json()["scores"] == r.json()["rewards"]
    assert set(r.json()["extra_logs"]) == {"truncated"}


def test_classify_as_vllm_clients_send_it(served):
    """verl-style: {"model", "input": [...], "use_activation": false, "add_special_tokens": false}."""
    rm = served["models"]["rm"]
    texts = [rm.encoder.tokenizer.apply_chat_template(c, tokenize=False) for c in CONVERSATIONS[:2]]
    raw = served["client"].post("/classify", json={"model": "rm", "input": texts, "use_activation": False,
                                                   "add_special_tokens": False})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    assert [d["num_classes"] for d in body["data"]] == [1, 1]
    expected = rm.score(CONVERSATIONS[:2])
    assert [d["probs"][0] for d in body["data"]] == pytest.approx(expected, abs=1e-4)
    activated = served["client"].post("/classify", json={"model": "rm", "input": texts[0]}).json()
    assert activated["data"][0]["probs"][0] == pytest.approx(sigmoid(expected[0]), abs=1e-5)
    legacy = served["client"].post("/classify", json={"model": "rm", "input": texts[0], "activation": False}).json()
    assert legacy["data"][0]["probs"][0] == pytest.approx(expected[0], abs=1e-4)
    chat = served["client"].post("/classify", json={"model": "rm", "messages": CONVERSATIONS[0],
                                                    "use_activation": False}).json()
    assert chat["data"][0]["probs"][0] == pytest.approx(expected[0], abs=1e-4)
    assert body["usage"]["prompt_tokens"] > 0


def test_multi_output_model_over_http(served):
    """/v1/rewards: the chosen scalar plus every label; /classify: every label, as vLLM returns them
    (raw with use_activation false; softmax over several labels by default: vLLM's PoolerClassify in
    vllm/model_executor/layers/pooler/activations.py at vllm-project/vllm@1c713679497631bd9bf8b251c9ac93b6f6680326)."""
    from cluster.tiny import HELPSTEER2_LABELS

    expected = served["models"]["rm-attrs"].score_detailed(CONVERSATIONS[:3])
    body = served["client"].post("/v1/rewards", json={"model": "rm-attrs", "conversations": CONVERSATIONS[:3]}).json()
    assert body["labels"] == list(HELPSTEER2_LABELS)
    assert body["scores"] == pytest.approx([r.score for r in expected], abs=1e-4)
    for got, want in zip(body["values"], expected):
        assert got == pytest.approx(want.values, abs=1e-4) and got[1] == pytest.approx(want.score, abs=1e-4)
    raw = served["client"].post("/classify", json={"model": "rm-attrs", "messages": CONVERSATIONS[0],
                                                   "use_activation": False}).json()
    [row] = raw["data"]
    assert row["num_classes"] == 5 and row["probs"] == pytest.approx(expected[0].values, abs=1e-4)
    assert row["label"] == HELPSTEER2_LABELS[max(range(5), key=expected[0].values.__getitem__)]
    [soft] = served["client"].post("/classify", json={"model": "rm-attrs", "messages": CONVERSATIONS[0]}).json()["data"]
    exps = [math.exp(v) for v in expected[0].values]
    assert soft["probs"] == pytest.approx([e / sum(exps) for e in exps], abs=1e-5)
    # a one-label model keeps its old answer shape
    plain = served["client"].post("/v1/rewards", json={"model": "rm", "conversations": CONVERSATIONS[:1]}).json()
    assert plain["values"] is None and plain["labels"] is None


def test_encoder_reward_model_over_http(served):
    """BERT-style: the (question, answer) pair and its token types cross the tokenizer deployment and
    the replica as they do in-process."""
    convs = [c for c in CONVERSATIONS if len(c) == 2]
    body = served["client"].post("/v1/rewards", json={"model": "rm-bert", "conversations": convs}).json()
    assert body["scores"] == pytest.approx(served["models"]["rm-bert"].score(convs), abs=1e-4)
    assert any(body["truncated"])  # max_length 64: the long answer is cut from the left
    bad = served["client"].post("/v1/rewards", json={"model": "rm-bert", "conversations": [CONVERSATIONS[2]]})
    assert bad.status_code == 422 and "no chat template" in bad.json()["error"]["message"]


# ---------------------------------------------------------------- errors, limits, auth


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "fragment"),
    [
        ("/v1/rewards", {"conversations": [[{"role": "bot", "content": "x"}]]}, 422, "invalid_input", "role"),
        ("/v1/rewards", {"conversations": [[{"role": "user", "content": "x"}]]}, 422, "invalid_input",
         "last message must be the assistant"),
        ("/v1/rewards", {"conversations": []}, 422, "invalid_input", "conversations"),
        ("/v1/rewards", {"conversation": [CONVERSATIONS[0]]}, 422, "invalid_input", "conversation"),
        ("/v1/rewards", {"model": "nope", "conversations": [CONVERSATIONS[0]]}, 404, "unknown_model", "nope"),
        ("/v1/rewards", {"model": "judge", "conversations": [CONVERSATIONS[0]]}, 422, "invalid_input",
         "is a critic"),
        ("/v1/rewards", {"conversations": [CONVERSATIONS[1]] * 65}, 413, "request_too_large", "limit is 64"),
        ("/v1/judge", {"items": ITEMS, "mode": "sample"}, 422, "invalid_input", "mode"),
        ("/v1/compare", {"prompt": "q"}, 422, "invalid_input", "response_a"),
        ("/classify", {"model": "rm"}, 422, "invalid_input", "exactly one of input or messages"),
    ],
)
def test_errors_are_mapped_with_a_request_id_and_no_traceback(served, path, body, status, code, fragment):
    r = served["client"].post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and fragment in err["message"]
    assert err["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text and "File \"" not in r.text


def test_body_over_the_byte_limit_is_413(served):
    big = {"conversations": [[{"role": "user", "content": "x" * 250_000}, {"role": "assistant", "content": "y"}]]}
    r = served["client"].post("/v1/rewards", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_malformed_json_is_422(served):
    r = served["client"].post("/v1/rewards", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"


def test_api_keys(served):
    base = f"http://127.0.0.1:{served['port']}"
    body = {"conversations": [CONVERSATIONS[0]]}
    assert httpx.post(f"{base}/v1/rewards", json=body).status_code == 401
    wrong = httpx.post(f"{base}/v1/rewards", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{base}/v1/models").status_code == 401
    assert httpx.get(f"{base}/healthz").status_code == 200
    # auth comes before parsing: an unauthenticated caller learns nothing about the body
    assert httpx.post(f"{base}/v1/rewards", content=b"{bad").status_code == 401


def test_overload_gives_503_with_retry_after(served):
    """judge: max_ongoing_requests=1, max_queued_requests=1; generation keeps the replica busy."""
    async def burst():
        async with httpx.AsyncClient(base_url=served["client"].base_url, timeout=120,
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as c:
            body = {"items": ITEMS * 8, "mode": "generate"}
            return await asyncio.gather(*(c.post("/v1/judge", json=body) for _ in range(8)))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes, codes
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1" and rejected.json()["error"]["code"] == "overloaded"


# ---------------------------------------------------------------- placement, batching, reconfigure


def test_one_replica_per_gpu(served):
    stats = replica_stats("reward-rm", min_distinct=2)
    assert len(stats) == 2
    gpu_ids = [s["gpu_ids"] for s in stats.values()]
    assert all(len(ids) == 1 for ids in gpu_ids)
    assert gpu_ids[0] != gpu_ids[1]


def test_a_third_gpu_replica_waits(served):
    from cluster.core.config import ServedModel
    from deployments.app import replica_deployment

    extra = ServedModel(name="rm-extra", path=str(served["paths"][0]), kind="reward",
                        replicas={"num_gpus": 1, "num_cpus": 0.1})
    serve._run(replica_deployment(extra), _blocking=False, name="gpu-probe", route_prefix=None)
    try:
        time.sleep(8)
        app = serve.status().applications["gpu-probe"]
        assert app.status != "RUNNING"
        replica_states = app.deployments["reward-rm-extra"].replica_states
        assert replica_states.get("RUNNING", 0) == 0, replica_states
    finally:
        serve.delete("gpu-probe")


def test_concurrent_requests_are_batched_together(served):
    """24 concurrent one-conversation requests reach the replicas as far fewer gathered batches
    (gathered at the ingress into shared tokenizer/replica calls, and again at the replica)."""
    def totals():
        stats = replica_stats("reward-rm", 2).values()
        return {k: sum(s[k] for s in stats) for k in ("sequences", "batches")}

    before = totals()

    async def many():
        async with httpx.AsyncClient(base_url=served["client"].base_url, timeout=120,
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as c:
            return await asyncio.gather(*(c.post("/v1/rewards", json={"conversations": [conv]})
                                          for conv in CONVERSATIONS * 4))

    responses = asyncio.run(many())
    expected = served["models"]["rm"].score(CONVERSATIONS * 4)
    assert [r.json()["scores"][0] for r in responses] == pytest.approx(expected, abs=1e-4)
    after = totals()
    assert after["sequences"] - before["sequences"] == 24
    assert after["batches"] - before["batches"] < 24  # forward passes shared between requests


def test_a_bad_request_does_not_fail_the_requests_gathered_with_it(served):
    bad = {"conversations": [[{"role": "user", "content": "no answer to score"}]]}

    async def mixed():
        async with httpx.AsyncClient(base_url=served["client"].base_url, timeout=120,
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as c:
            bodies = [bad if i % 3 == 0 else {"conversations": [CONVERSATIONS[i % 6]]} for i in range(18)]
            return bodies, await asyncio.gather(*(c.post("/v1/rewards", json=b) for b in bodies))

    bodies, responses = asyncio.run(mixed())
    rm = served["models"]["rm"]
    for body, r in zip(bodies, responses):
        if body is bad:
            assert r.status_code == 422 and "last message must be the assistant" in r.json()["error"]["message"]
        else:
            assert r.status_code == 200
            assert r.json()["scores"] == pytest.approx(rm.score(body["conversations"]), abs=1e-4)


def test_live_reconfigure_keeps_replicas(served):
    """Retune batching through the config's user_config override: the stock Serve workflow, applied
    by reconfigure() on the running replicas, not by restarting them."""
    before = set(replica_stats("reward-rm", 2))
    new_settings = {"batch_max_tokens": 8192, "batch_wait_timeout_s": 0.02, "max_batch_tokens": 1024}
    deploy({"name": "scoring", "route_prefix": "/", "import_path": "deployments.app:build_app",
            "args": app_args(*served["paths"]),
            "deployments": [{"name": "reward-rm", "user_config": new_settings}]})
    deadline = time.time() + 30
    while time.time() < deadline:
        after = replica_stats("reward-rm", 2)
        if all(s["batch_wait_timeout_s"] == 0.02 for s in after.values()) and len(after) == 2:
            break
        time.sleep(0.5)
    assert set(after) == before  # same replicas: reconfigured, not restarted
    for s in after.values():
        assert (s["batch_max_tokens"], s["batch_wait_timeout_s"], s["max_batch_tokens"]) == (8192, 0.02, 1024)
    r = served["client"].post("/v1/rewards", json={"conversations": CONVERSATIONS})
    assert r.json()["scores"] == pytest.approx(served["models"]["rm"].score(CONVERSATIONS), abs=1e-4)


def test_custom_metrics_are_exported(served):
    """Tokens scored, batch sizes, padding efficiency and queue wait, per model, on Ray's
    Prometheus endpoint (what the Serve metrics dashboards read)."""
    served["client"].post("/v1/rewards", json={"conversations": CONVERSATIONS})
    wanted = ["ray_scoring_tokens_total", "ray_scoring_batch_requests", "ray_scoring_batch_tokens",
              "ray_scoring_padding_efficiency", "ray_scoring_queue_wait_seconds"]
    text = ""
    for _ in range(40):
        text = httpx.get(f"http://127.0.0.1:{served['metrics_port']}/metrics", timeout=10).text
        if all(w in text for w in wanted) and 'model="rm"' in text:
            break
        time.sleep(1)
    missing = [w for w in wanted if w not in text]
    assert not missing, missing
    assert 'model="rm"' in text


def test_two_node_cluster_places_one_replica_per_node(reward_dir):
    """ray.cluster_utils.Cluster with one fake GPU per node, in its own process."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(root / "tests" / "two_node_cluster.py"), str(reward_dir("llama"))],
                          capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith('{"nodes"')]
    result = json.loads(line)
    assert len(result["nodes"]) == 2
    replicas = list(result["replicas"].values())
    assert len(replicas) == 2
    assert {r["node_id"] for r in replicas} == set(result["nodes"])  # one replica on each node
    assert all(len(r["gpu_ids"]) == 1 for r in replicas)
    assert all(r["calls"] > 0 for r in replicas)  # requests were served from both
    expected = load_model(ModelSpec(name="rm", path=str(reward_dir("llama")), kind="reward")).score(
        [CONVERSATIONS[0]])[0]
    assert result["scores"] == pytest.approx([expected] * 24, abs=1e-4)


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

    exc = {"model_failure": ModelFailure("model 'rm' failed on a batch: RuntimeError: CUDA error"),
           "unexpected": KeyError("secret internal detail"),
           "backpressure": BackPressureError(num_queued_requests=5, max_queued_requests=4)}[err]
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
    from cluster.http.vllm import classify_activation

    values = [2.0, -1.0, 0.5]
    assert classify_activation(values, "regression") == values
    assert classify_activation(values, "multi_label_classification") == pytest.approx([sigmoid(v) for v in values])
    assert classify_activation([2.0], None) == pytest.approx([sigmoid(2.0)])
    exps = [math.exp(v) for v in values]
    assert classify_activation(values, "single_label_classification") == pytest.approx([e / sum(exps) for e in exps])
    assert classify_activation(values, None) == pytest.approx([e / sum(exps) for e in exps])
