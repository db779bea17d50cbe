"""The attack run against the Serve app, kept as the project's own suite (`pytest -m reliability`):
overload with small queues, replicas killed mid-stream, slow and chunked bodies, hostile bodies
over the real proxy. Each test prints its figures at the end of the run (conftest: `figures`), and
docs/reliability.md quotes them.

The app ("attack", at /attack) runs the tiny Llama RM and the taught critic with the keys on and
queues far smaller than a request: rm holds 2 calls and queues 2 per caller, judge 1 and 1, and the
ingress gives up on a call after 4 s (admission_timeout_s), so the 503 path is reached too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import threading
import time
from collections import Counter

import httpx
import pytest
from helpers import API_KEY, CONVERSATIONS, TOL, deploy

from cluster import ModelSpec, RewardClient, load_model

pytestmark = pytest.mark.reliability
serve = pytest.importorskip("ray.serve")

PREFIX = "/attack"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ITEMS = [
    {"prompt": "What is the capital of France?", "response_a": "Paris.", "response_b": "London."},
    {"prompt": "Add 2 and 3.", "response_a": "5", "response_b": "2 + 3 = 6, because addition."},
]


FILE_KEY = "key-from-a-file-4242"


def attack_args(rm, critic, key_file) -> dict:
    return {
        "api_keys": ["sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()],
        "api_keys_file": str(key_file),  # read by the ingress replica, where it runs
        "max_request_bytes": 200_000,
        "body_timeout_s": 3,
        "tokenizer": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.1},
        "ingress": {"min_replicas": 1, "max_replicas": 1, "admission_timeout_s": 4},
        "models": [
            {
                "name": "rm",
                "path": str(rm),
                "kind": "reward",
                "max_length": 512,
                "max_batch_tokens": 2048,
                "replicas": {
                    "num_cpus": 0.1,
                    "max_ongoing_requests": 2,
                    "max_queued_requests": 2,
                    "batch_max_tokens": 1024,
                },
            },
            {
                "name": "judge",
                "path": str(critic),
                "kind": "critic",
                "max_new_tokens": 8,
                "replicas": {"num_cpus": 0.1, "max_ongoing_requests": 1, "max_queued_requests": 1},
            },
        ],
    }


@pytest.fixture(scope="module")
def attack(serve_port, reward_dir, critic_dir, tmp_path_factory):
    rm = reward_dir("llama")
    key_file = tmp_path_factory.mktemp("secrets") / "api_keys"
    key_file.write_text(f"# the attack app's second key\n{FILE_KEY}\n")
    deploy(
        {
            "name": "attack",
            "route_prefix": PREFIX,
            "import_path": "deployments.app:build_app",
            "args": attack_args(rm, critic_dir, key_file),
        }
    )
    base = f"http://127.0.0.1:{serve_port}{PREFIX}"
    yield {
        "base": base,
        "port": serve_port,
        "rm": load_model(ModelSpec(name="rm", path=str(rm), kind="reward", max_length=512)),  # as served
        "judge": load_model(ModelSpec(name="judge", path=str(critic_dir), kind="critic", max_new_tokens=8)),
    }
    serve.delete("attack")


def conversations(n: int, seed: int = 0, long: bool = False) -> list:
    """n distinct conversations (each one's score differs from its neighbours')."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        base = CONVERSATIONS[i % len(CONVERSATIONS)]
        words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega"]) for _ in range(300 if long else 3))
        out.append(base[:-1] + [{"role": "assistant", "content": f"{base[-1]['content']} [{i}] {words}"}])
    return out


def replica_pid(deployment: str) -> int:
    return serve.get_deployment_handle(deployment, app_name="attack").get_stats.remote().result()["pid"]


def wait_healthy(timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        app = serve.status().applications.get("attack")
        if app is not None and all(d.status == "HEALTHY" for d in app.deployments.values()):
            return
        time.sleep(0.5)
    raise TimeoutError("the attack app did not become healthy again")


def no_internals(text: str) -> bool:
    return "Traceback" not in text and 'File "' not in text and "site-packages" not in text


def test_keys_hold_behind_a_route_prefix_and_come_from_a_key_file(attack):
    body = {"conversations": [CONVERSATIONS[0]]}
    url = f"{attack['base']}/v1/rewards"
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer  x"}, timeout=60).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {FILE_KEY}"}, timeout=60).status_code == 200
    assert httpx.get(f"{attack['base']}/healthz", timeout=60).status_code == 200  # open, under the prefix too
    for path in ("/docs", "/redoc", "/openapi.json"):
        r = httpx.get(f"{attack['base']}{path}", headers=AUTH, timeout=60)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path


# ---------------------------------------------------------------- overload


def test_overload_every_valid_request_succeeds_under_retry(attack, figures):
    """Seen before issue 14: 12 debiased judge items on an idle app -> 503 on every try; 30 long
    conversations -> 503 6/6; the default RewardClient (8 chunks of 64) -> 0 of 2,000 results."""
    rm, judge = attack["rm"], attack["judge"]
    singles = conversations(240, seed=1)
    longs = [conversations(30, seed=10 + k, long=True) for k in range(6)]
    items = [dict(ITEMS[i % 2], prompt=f"{ITEMS[i % 2]['prompt']} ({i})") for i in range(12)]
    bodies = (
        [("/v1/rewards", {"conversations": [c]}) for c in singles]
        + [("/v1/rewards", {"conversations": batch}) for batch in longs]
        + [("/v1/judge", {"items": items, "debias": True})] * 6
    )

    async def run():
        first: Counter = Counter()
        done: dict[int, dict] = {}
        retried = 0
        async with httpx.AsyncClient(
            base_url=attack["base"], headers=AUTH, timeout=120, limits=httpx.Limits(max_connections=400)
        ) as c:

            async def one(k: int, path: str, body: dict) -> None:
                nonlocal retried
                for attempt in range(60):
                    r = await c.post(path, json=body)
                    if attempt == 0:
                        first[r.status_code] += 1
                    assert r.status_code in (200, 503), (r.status_code, r.text[:300])
                    assert no_internals(r.text)
                    if r.status_code == 200:
                        done[k] = r.json()
                        return
                    assert r.json()["error"]["code"] == "overloaded" and "admission_timeout_s" in r.text
                    retried += 1
                    await asyncio.sleep(float(r.headers["retry-after"]) * (1 + random.random()))
                raise AssertionError(f"request {k} never succeeded")

            await asyncio.gather(*(one(k, p, b) for k, (p, b) in enumerate(bodies)))
        return first, done, retried

    started = time.perf_counter()
    first, done, retried = asyncio.run(run())
    seconds = time.perf_counter() - started
    assert len(done) == len(bodies)
    singles_got = [done[k]["scores"][0] for k in range(len(singles))]
    assert singles_got == pytest.approx(rm.score(singles), abs=TOL)
    for j, batch in enumerate(longs):
        assert done[len(singles) + j]["scores"] == pytest.approx(rm.score(batch), abs=TOL)
    want = [v.prob_a for v in judge.judge(items, debias=True)]
    for k in range(len(singles) + len(longs), len(bodies)):
        assert [v["prob_a"] for v in done[k]["results"]] == pytest.approx(want, abs=TOL)

    # the default RewardClient: 8 chunks of 64 in flight, its own retries
    many = conversations(2000, seed=2)
    client = RewardClient.http(attack["base"], api_key=API_KEY, model="rm")
    got = client.score(many)
    assert got == pytest.approx(rm.score(many), abs=TOL)
    figures(
        requests=len(bodies),
        first_try=dict(sorted(first.items())),
        retried_503=retried,
        succeeded=len(done),
        lost=len(bodies) - len(done),
        seconds=round(seconds, 1),
        rewardclient_items=len(many),
        rewardclient_results=len(got),
        rewardclient_retries=client.stats["retries"],
    )
    client.close()


# ---------------------------------------------------------------- replicas killed mid-stream


def _kill_during(stream, deployment: str, after_s: float):
    """Run `stream()` in a thread, SIGKILL the deployment's replica process `after_s` into it."""
    result: dict = {}

    def work():
        try:
            result["value"] = stream()
        except BaseException as err:  # noqa: BLE001 - reported below
            result["error"] = err

    pid = replica_pid(deployment)
    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(after_s)
    alive_at_kill = thread.is_alive()
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    if "error" in result:
        raise result["error"]
    return result["value"], alive_at_kill


@pytest.mark.parametrize("transport", ["http", "handle"])
def test_a_replica_killed_mid_stream_loses_and_duplicates_nothing(attack, transport, figures):
    rm = attack["rm"]
    many = conversations(2000, seed=3 if transport == "http" else 4)
    want = rm.score(many)
    client = (
        RewardClient.http(attack["base"], api_key=API_KEY, model="rm")
        if transport == "http"
        else RewardClient.handle("attack", model="rm")
    )
    got, mid_stream = _kill_during(lambda: client.score(many), "reward-rm", after_s=1.5)
    wait_healthy()
    lost = sum(g is None for g in got) + (len(many) - len(got))
    wrong = sum(abs(g - w) > TOL for g, w in zip(got, want))  # a duplicate or shifted result lands here
    figures(
        transport=transport,
        items=len(many),
        killed_mid_stream=mid_stream,
        results=len(got),
        lost=lost,
        wrong_or_duplicated=wrong,
        client_retries=client.stats["retries"],
    )
    assert mid_stream and lost == 0 and wrong == 0
    client.close()


def test_a_critic_killed_during_generation_answers_a_retryable_status(attack, figures):
    """Seen before issue 14: a critic replica dying during /v1/judge mode: generate answered 500."""
    judge = attack["judge"]
    items = [dict(ITEMS[i % 2], prompt=f"{ITEMS[i % 2]['prompt']} ({i})") for i in range(256)]
    want = [v.winner for v in judge.judge(items, mode="generate")]

    def generate():
        return httpx.post(
            f"{attack['base']}/v1/judge", json={"items": items, "mode": "generate"}, headers=AUTH, timeout=120
        )

    statuses, mid_stream = [], []
    for after_s in (0.3, 1.0):
        r, mid = _kill_during(generate, "critic-judge", after_s)
        statuses.append(r.status_code)
        mid_stream.append(mid)
        wait_healthy()
        assert r.status_code in (200, 503), r.text[:300]
        assert no_internals(r.text)
        if r.status_code == 503:
            assert r.headers["retry-after"] and r.json()["error"]["code"] == "overloaded"
        else:
            assert [v["winner"] for v in r.json()["results"]] == want
    figures(
        kills=len(statuses),
        killed_mid_request=mid_stream,
        statuses=statuses,
        five_hundreds=sum(s == 500 for s in statuses),
    )
    assert all(mid_stream)


# ---------------------------------------------------------------- bodies: slow, chunked, hostile


def _raw(port: int, head: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head)
    return s


def _status(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return (int(head.split(b" ")[1]) if head else 0), rest


def test_slow_bodies_time_out_and_leave_the_app_answering(attack, figures):
    """Seen before: 520 authenticated slow bodies filled the ingress's 512 slots and /healthz timed out."""
    n = 60
    head = (
        f"POST {PREFIX}/v1/rewards HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    slow = [_raw(attack["port"], head + b'{"conversations": [') for _ in range(n)]
    time.sleep(0.5)
    started = time.perf_counter()
    health = httpx.get(f"{attack['base']}/healthz", timeout=10)
    health_s = time.perf_counter() - started
    valid = httpx.post(
        f"{attack['base']}/v1/rewards", json={"conversations": [CONVERSATIONS[0]]}, headers=AUTH, timeout=30
    )
    statuses, bodies = Counter(), []
    for s in slow:
        status, rest = _status(s)
        statuses[status] += 1
        bodies.append(rest)
        s.close()
    waited = time.perf_counter() - started
    figures(
        slow_bodies=n,
        healthz_status=health.status_code,
        healthz_s=round(health_s, 2),
        valid_request=valid.status_code,
        slow_statuses=dict(statuses),
        all_answered_within_s=round(waited, 1),
    )
    assert health.status_code == 200 and health_s < 5 and valid.status_code == 200
    assert statuses == {408: n}
    assert all(b'"request_timeout"' in b and b"body_timeout_s" in b for b in bodies if b)


def test_a_chunked_body_is_refused_before_it_is_read_in_full(attack, figures):
    """Seen before: a chunked 300 MB body was read into memory in full before the 413."""
    head = (
        f"POST {PREFIX}/v1/rewards HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    s = _raw(attack["port"], head)
    chunk = b"x" * (1 << 20)
    sent, status, rest = 0, 0, b""
    s.settimeout(0.05)
    try:
        while sent < 300 << 20:
            s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
            try:
                status, rest = _status(s)
                if status:
                    break
            except TimeoutError:
                continue
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed: read what it said
    if not status:
        s.settimeout(10)
        try:
            status, rest = _status(s)
        except OSError:
            pass
    s.close()
    figures(body_limit_bytes=200_000, sent_mb_before_answer=sent >> 20, status=status)
    assert status == 413 and b"max_request_bytes" in rest
    assert sent < 64 << 20  # answered while the client was still sending, not after 300 MB


def test_hostile_bodies_over_the_proxy(attack, figures):
    """A sample of hostile bodies through Serve's proxy and the ingress replica (the in-process
    fuzzer, test_reliability_fuzz.py, sends thousands): no 5xx, no traceback, our error shape."""
    rng = random.Random(14)
    paths = [
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
        "/nope",
        "/v1/models",
    ]
    bodies = [
        b"",
        b"{",
        b"null",
        b"[]",
        b'{"conversations": null}',
        b'{"conversations": [[]]}',
        b'{"conversations": [[{"role": "bot", "content": "x"}]]}',
        b"\xff\xfe\xfd",
        b'{"model": "' + b"m" * 100_000 + b'"}',
        b'{"items": [{"prompt": 1}]}',
        b'{"input": [[-1, 99999999999]]}',
        b'{"text": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
        b'{"query": NaN}',
        b'{"conversations": "' + b"\\ud800" * 100 + b'"}',
    ]
    statuses: Counter = Counter()
    bad = []
    with httpx.Client(base_url=attack["base"], headers=AUTH, timeout=60) as c:
        for _k in range(300):
            path = rng.choice(paths)
            method = "GET" if path == "/v1/models" and rng.random() < 0.5 else rng.choice(["POST", "POST", "PUT"])
            r = c.request(method, path, content=rng.choice(bodies))
            statuses[r.status_code] += 1
            shape_ok = True
            if r.status_code >= 400:
                try:
                    body = r.json()
                    shape_ok = isinstance(body, dict) and bool(body)
                except json.JSONDecodeError:
                    shape_ok = False
            if r.status_code >= 500 or not no_internals(r.text) or len(r.text) > 5000 or not shape_ok:
                bad.append((method, path, r.status_code, r.text[:200]))
    figures(tried=sum(statuses.values()), statuses=dict(sorted(statuses.items())), bad=len(bad))
    assert not bad, bad[:5]
