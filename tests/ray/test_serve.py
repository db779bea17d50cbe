"""The Serve app on a local Ray cluster with two fake GPUs: routes through Serve's proxy and real
deployment handles answer as the same app in-process (a few of them: every route is compared over the
Serve layer's own objects in-process, over fake handles, in tests/http/test_serve_layer.py; the routes
themselves are tested in tests/http/test_http.py), replicas pin one per GPU, concurrent requests batch
together, overload waits its turn, reconfigure, metrics, two nodes."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import pytest
from helpers import API_KEY, CONVERSATIONS, REPO, TOL, TRUSTED_CLIENT, app_args, deploy
from test_serve_layer import ITEMS, ROUTES, same

from cluster import ModelSpec, load_model

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


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


# Every route of the matrix is compared over the Serve layer in-process (tests/http/test_serve_layer.py);
# live, a few, each through another kind of handle call: none (models), the tokenizer and a reward
# replica's score (rewards), a critic's generate, a replica's describe (classify's labels), and an
# error the tokenizer deployment answers (too long). A critic's verdicts: test_overload_waits_its_turn.
LIVE = {
    "models": ("GET", "/v1/models", None),
    "rewards": ("POST", "/v1/rewards", {"conversations": CONVERSATIONS}),
    "judge generate": ("POST", "/v1/judge", {"items": ITEMS[:1], "mode": "generate", "debias": True}),
    "classify labels": ("POST", "/classify", {"model": "rm-attrs", "messages": CONVERSATIONS[0]}),
    "classify too long": ("POST", "/classify", {"model": "rm", "input": "hello " * 600}),
}


@pytest.mark.parametrize(("method", "path", "body"), LIVE.values(), ids=LIVE.keys())
def test_routes_through_serve_answer_as_in_process(served, inproc, method, path, body):
    """The same app over deployment handles (tokenizer deployment, replicas) and over in-process
    models: the same status and body, numbers to TOL (errors: the same code and message)."""
    assert (method, path, body) in ROUTES  # one of the matrix's
    live = served["client"].request(method, path, json=body)
    local = inproc["client"].request(method, path, json=body)
    assert live.status_code == local.status_code, (live.text, local.text)
    assert same(live.json(), local.json()), (live.text, local.text)
    if live.status_code >= 400 and isinstance(live.json().get("error"), dict):
        assert live.json()["error"]["request_id"] == live.headers["x-request-id"]  # Serve's own id


def test_openai_client_chat_completions_through_serve(served, inproc):
    """The `openai` package against the Serve app: 8 concurrent chat completions reach the judge's
    replica, whose one generation loop serves them all (continuous batching), each answer the one
    the in-process app gives (tests/http/test_client_openai.py compares that with `generate`)."""
    import openai

    convs = [[{"role": "user", "content": f"Judge answer {i}: " + "word " * i}] for i in range(8)]

    async def main(base_url: str, transport=None):
        http = httpx.AsyncClient(transport=transport, base_url=base_url) if transport else None
        async with openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, http_client=http) as c:
            return await asyncio.gather(
                *(c.chat.completions.create(model="judge", messages=m, temperature=0, max_tokens=16) for m in convs)
            )

    live = asyncio.run(main(f"http://127.0.0.1:{served['port']}/v1"))
    local = asyncio.run(main("http://in-process/v1", httpx.ASGITransport(app=inproc["app"])))
    for a, b in zip(live, local):
        assert a.choices[0].message.content == b.choices[0].message.content
        assert a.usage == b.usage and a.choices[0].finish_reason == b.choices[0].finish_reason
    assert any(a.choices[0].message.content for a in live)


def test_auth_and_limits_hold_behind_serve(served):
    base = f"http://127.0.0.1:{served['port']}"
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert httpx.post(f"{base}/v1/rewards", json={"conversations": [CONVERSATIONS[0]]}).status_code == 401
    big = {"conversations": [[{"role": "user", "content": "x" * 250_000}, {"role": "assistant", "content": "y"}]]}
    assert served["client"].post("/v1/rewards", json=big).status_code == 413


def test_keyless_clients_behind_serve(served, ray_cluster):
    """What OpenRLHF and verl can send: the key in the URL, or nothing from a trusted address
    (the proxy hands the client's address to the ingress); the key is never written to Serve's logs."""
    import glob

    import ray

    base = f"http://127.0.0.1:{served['port']}"
    body = {"query": ["hello"]}
    assert httpx.post(f"{base}/get_reward?api_key={API_KEY}", json=body, timeout=60).status_code == 200
    assert httpx.post(f"{base}/get_reward", json=body, timeout=60).status_code == 401
    trusted = httpx.HTTPTransport(local_address=TRUSTED_CLIENT)
    with httpx.Client(transport=trusted, timeout=60) as c:
        assert c.post(f"http://127.0.0.1:{served['port']}/get_reward", json=body).status_code == 200
    time.sleep(1)  # log lines are flushed by the writers
    session = ray._private.worker._global_node.get_session_dir_path()
    for path in glob.glob(f"{session}/logs/**/*", recursive=True):
        if os.path.isfile(path):
            with open(path, errors="replace") as f:
                assert API_KEY not in f.read(), path


def test_overload_waits_its_turn(served):
    """judge: max_ongoing_requests=1, max_queued_requests=1 (2 calls in flight per caller). Seen
    before issue 14: 12 judge items with debias on an idle app got 503 on every try, and a burst of
    generate requests got 503s. Now the ingress feeds each request's calls to the replica as it
    frees, and every request is answered, as the card answers it."""
    judge = served["models"]["judge"]
    items = [dict(ITEMS[i % len(ITEMS)], prompt=f"{ITEMS[i % len(ITEMS)]['prompt']} ({i})") for i in range(12)]
    r = served["client"].post("/v1/judge", json={"model": "judge", "items": items, "debias": True})
    assert r.status_code == 200, r.text
    assert [v["prob_a"] for v in r.json()["results"]] == pytest.approx(
        [v.prob_a for v in judge.judge(items, debias=True)], abs=TOL
    )

    async def burst():
        async with httpx.AsyncClient(
            base_url=served["client"].base_url, timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as c:
            body = {"items": ITEMS * 8, "mode": "generate"}
            return await asyncio.gather(*(c.post("/v1/judge", json=body) for _ in range(8)))

    expected = [v.winner for v in judge.judge(ITEMS * 8, mode="generate")]
    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 8
    assert all([v["winner"] for v in r.json()["results"]] == expected for r in responses)


# ---------------------------------------------------------------- placement, batching, reconfigure


def test_one_replica_per_gpu(served):
    stats = replica_stats("reward-rm", min_distinct=2)
    assert len(stats) == 2
    gpu_ids = [s["gpu_ids"] for s in stats.values()]
    assert all(len(ids) == 1 for ids in gpu_ids)
    assert gpu_ids[0] != gpu_ids[1]


@pytest.mark.slow  # for time (CI runs `pytest -m slow`)
def test_a_third_gpu_replica_waits(served):
    from cluster.core.config import ServedModel
    from deployments.app import replica_deployment

    extra = ServedModel(
        name="rm-extra", path=str(served["paths"][0]), kind="reward", replicas={"num_gpus": 1, "num_cpus": 0.1}
    )
    serve._run(replica_deployment(extra), _blocking=False, name="gpu-probe", route_prefix=None)
    try:
        time.sleep(8)
        app = serve.status().applications["gpu-probe"]
        assert app.status != "RUNNING"
        replica_states = app.deployments["reward-rm-extra"].replica_states
        assert replica_states.get("RUNNING", 0) == 0, replica_states
    finally:
        serve.delete("gpu-probe")


def rm_totals(*keys: str) -> dict[str, int]:
    """The reward model "rm"'s replica counters, summed over its two replicas."""
    stats = replica_stats("reward-rm", 2).values()
    return {k: sum(s[k] for s in stats) for k in keys}


def one_per_request(served, convs: list) -> list:
    """Every conversation in its own concurrent /v1/rewards request (an RL worker per sample)."""

    async def send():
        async with httpx.AsyncClient(
            base_url=served["client"].base_url, timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as c:
            return await asyncio.gather(*(c.post("/v1/rewards", json={"conversations": [conv]}) for conv in convs))

    return asyncio.run(send())


def test_concurrent_requests_are_batched_together(served):
    """24 concurrent one-conversation requests reach the replicas as far fewer gathered batches
    (gathered at the ingress into shared tokenizer/replica calls, and again at the replica)."""
    before = rm_totals("sequences", "batches")
    responses = one_per_request(served, CONVERSATIONS * 4)
    expected = served["models"]["rm"].score(CONVERSATIONS * 4)
    assert [r.json()["scores"][0] for r in responses] == pytest.approx(expected, abs=TOL)
    after = rm_totals("sequences", "batches")
    assert after["sequences"] - before["sequences"] == 24
    assert after["batches"] - before["batches"] < 24  # forward passes shared between requests


def test_one_sample_requests_of_a_group_share_its_prompt(served):
    """GRPO's n responses to a prompt, sent one per request (OpenRLHF's agent executor): gathered at
    the ingress and the replica, the prompt is computed once per pass, and every request still gets
    its own item's card score."""
    from helpers import card_ids, card_score_ids
    from test_shared_prefix import grpo_batch

    convs = grpo_batch("llama", seed=3, groups=2, n=8, prompt_words=40, response_words=15)
    path, rm = served["paths"][0], served["models"]["rm"]
    encoded = rm.encoder.encode_inputs(convs)
    assert not any(e.truncated for e in encoded)  # the card scores all of each (max_length 512)

    before = rm_totals("tokens", "computed_tokens")
    responses = one_per_request(served, convs)
    assert [e.ids for e in encoded] == [card_ids(path, c) for c in convs]
    expected = [card_score_ids(path, e.ids) for e in encoded]
    assert [r.json()["scores"][0] for r in responses] == pytest.approx(expected, abs=TOL)
    after = rm_totals("tokens", "computed_tokens")
    assert after["computed_tokens"] - before["computed_tokens"] < 0.8 * (after["tokens"] - before["tokens"])


def test_a_bad_request_does_not_fail_the_requests_gathered_with_it(served):
    bad = {"conversations": [[{"role": "user", "content": "no answer to score"}]]}

    async def mixed():
        async with httpx.AsyncClient(
            base_url=served["client"].base_url, timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as c:
            bodies = [bad if i % 3 == 0 else {"conversations": [CONVERSATIONS[i % 6]]} for i in range(18)]
            return bodies, await asyncio.gather(*(c.post("/v1/rewards", json=b) for b in bodies))

    bodies, responses = asyncio.run(mixed())
    rm = served["models"]["rm"]
    for body, r in zip(bodies, responses):
        if body is bad:
            assert r.status_code == 422 and "last message must be the assistant" in r.json()["error"]["message"]
        else:
            assert r.status_code == 200
            assert r.json()["scores"] == pytest.approx(rm.score(body["conversations"]), abs=TOL)


def test_live_reconfigure_keeps_replicas(served):
    """Retune batching through the config's user_config override: the stock Serve workflow, applied
    by reconfigure() on the running replicas, not by restarting them."""
    before = set(replica_stats("reward-rm", 2))
    new_settings = {"batch_max_tokens": 8192, "batch_wait_timeout_s": 0.02, "max_batch_tokens": 1024}
    deploy(
        {
            "name": "scoring",
            "route_prefix": "/",
            "import_path": "deployments.app:build_app",
            "args": app_args(*served["paths"]),
            "deployments": [{"name": "reward-rm", "user_config": new_settings}],
        }
    )
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
    assert r.json()["scores"] == pytest.approx(served["models"]["rm"].score(CONVERSATIONS), abs=TOL)


def test_custom_metrics_are_exported(served):
    """Tokens scored, batch sizes, padding efficiency and queue wait, per model, on Ray's
    Prometheus endpoint (what the Serve metrics dashboards read)."""
    served["client"].post("/v1/rewards", json={"conversations": CONVERSATIONS})
    wanted = [
        "ray_scoring_tokens_total",
        "ray_scoring_batch_requests",
        "ray_scoring_batch_tokens",
        "ray_scoring_padding_efficiency",
        "ray_scoring_queue_wait_seconds",
    ]
    text = ""
    for _ in range(40):
        text = httpx.get(f"http://127.0.0.1:{served['metrics_port']}/metrics", timeout=10).text
        if all(w in text for w in wanted) and 'model="rm"' in text:
            break
        time.sleep(1)
    missing = [w for w in wanted if w not in text]
    assert not missing, missing
    assert 'model="rm"' in text


@pytest.mark.slow  # for time (CI runs `pytest -m slow`)
def test_two_node_cluster_places_one_replica_per_node(reward_dir):
    """ray.cluster_utils.Cluster with one fake GPU per node, in its own process."""
    import json
    import subprocess
    import sys

    root = REPO
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, str(root / "tests" / "two_node_cluster.py"), str(reward_dir("llama"))],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith('{"nodes"')]
    result = json.loads(line)
    assert len(result["nodes"]) == 2
    replicas = list(result["replicas"].values())
    assert len(replicas) == 2
    assert {r["node_id"] for r in replicas} == set(result["nodes"])  # one replica on each node
    assert all(len(r["gpu_ids"]) == 1 for r in replicas)
    assert all(r["calls"] > 0 for r in replicas)  # requests were served from both
    expected = load_model(ModelSpec(name="rm", path=str(reward_dir("llama")), kind="reward")).score([CONVERSATIONS[0]])[
        0
    ]
    assert result["scores"] == pytest.approx([expected] * 24, abs=TOL)
