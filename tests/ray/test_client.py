"""RewardClient: both transports against the served app give load_model's rewards, in order;
chunking; retries on 503 (Retry-After honoured) and dropped connections; the deadline; errors
named; a replica killed mid-stream and an overloaded critic queue lose nothing."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from helpers import API_KEY, CONVERSATIONS, REPO, TOL

from cluster.client.reward_client import RewardClient
from cluster.core.errors import InvalidInput, Overloaded, UnknownModel

ITEMS = [
    {"prompt": "What is the capital of France?", "response_a": "Paris.", "response_b": "London."},
    {"prompt": "Add 2 and 3.", "response_a": "5", "response_b": "2 + 3 = 6, because addition."},
]


def close(a, b) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= TOL for x, y in zip(a, b))


# ---------------------------------------------------------------- HTTP transport, scripted server


class Script:
    """An httpx MockTransport that answers from a list of steps, then scores by text length."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.bodies: list[dict] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        self.headers.append(request.headers)
        if self.steps:
            step = self.steps.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        if [] in body["conversations"]:  # what the real server says about an empty conversation
            at = body["conversations"].index([])
            return httpx.Response(
                422,
                json={
                    "error": {
                        "code": "invalid_input",
                        "request_id": "x",
                        "message": f"conversations[{at}]: the conversation is empty",
                    }
                },
            )
        scores = [float(len(json.dumps(c))) for c in body["conversations"]]
        return httpx.Response(
            200,
            json={
                "model": "rm",
                "scores": scores,
                "truncated": [False] * len(scores),
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            },
        )


def scripted(script: Script, **options) -> tuple[RewardClient, list[float]]:
    sleeps: list[float] = []

    async def record(delay: float) -> None:
        sleeps.append(delay)

    client = RewardClient.http(
        "http://rm.test", api_key="k", transport=httpx.MockTransport(script), sleep=record, seed=0, **options
    )
    return client, sleeps


def expected_lengths(convs) -> list[float]:
    return [float(len(json.dumps(c))) for c in convs]


def test_chunks_keep_input_order_and_send_the_key():
    script = Script()
    client, _ = scripted(script, max_items_per_call=2, max_concurrency=3)
    convs = [[{"role": "user", "content": "q" * i}, {"role": "assistant", "content": "a"}] for i in range(7)]
    assert client.score(convs) == expected_lengths(convs)
    assert [len(b["conversations"]) for b in script.bodies] == [2, 2, 2, 1]
    assert all(h["authorization"] == "Bearer k" for h in script.headers)
    client.close()


def test_chunks_respect_the_character_budget():
    script = Script()
    client, _ = scripted(script, max_chars_per_call=25)
    texts = ["x" * 10, "y" * 10, "z" * 10, "w" * 30]
    assert client.score_texts(texts) == expected_lengths(texts)
    assert [b["conversations"] for b in script.bodies] == [texts[:2], texts[2:3], texts[3:]]
    client.close()


def test_workers_refused_together_do_not_come_back_together():
    """Seen before: `Retry-After: 1` dominated the jitter, so every refused worker retried at 1.000 s."""
    busy = httpx.Response(
        503, headers={"Retry-After": "1"}, json={"error": {"code": "overloaded", "message": "full", "request_id": "r"}}
    )
    waits = []
    for seed in range(20):
        sleeps: list[float] = []

        async def record(delay: float, sleeps=sleeps) -> None:
            sleeps.append(delay)

        client = RewardClient.http(
            "http://rm.test",
            api_key="k",
            transport=httpx.MockTransport(Script(busy)),
            sleep=record,
            seed=seed,
            backoff_s=0.01,
        )
        assert client.score(["text"]) == expected_lengths(["text"])
        waits.append(sleeps[0])
        client.close()
    assert min(waits) >= 1.0 and max(waits) <= 1.5 and len({round(w, 4) for w in waits}) == 20


def test_retries_503_with_retry_after_and_a_dropped_connection():
    busy = httpx.Response(
        503,
        headers={"Retry-After": "0.75"},
        json={"error": {"code": "overloaded", "message": "queue full", "request_id": "x"}},
    )
    script = Script(busy, httpx.RemoteProtocolError("server disconnected"), httpx.ConnectError("refused"))
    client, sleeps = scripted(script, backoff_s=0.01)
    convs = CONVERSATIONS[:2]
    assert client.score(convs) == expected_lengths(convs)
    assert len(script.bodies) == 4 and client.stats["retries"] == 3
    assert 0.75 <= sleeps[0] <= 1.125  # Retry-After honoured over the shorter backoff, jittered above it
    assert all(s < 0.75 for s in sleeps[1:])  # then our own (jittered, exponential) backoff
    client.close()


def test_gives_up_at_the_deadline_with_a_clear_error():
    busy = httpx.Response(
        503, headers={"Retry-After": "30"}, json={"error": {"code": "overloaded", "message": "full", "request_id": "x"}}
    )
    client, sleeps = scripted(Script(busy), deadline_s=5)
    with pytest.raises(Overloaded, match=r"conversations\[0:1\]: gave up after 1 attempt.*HTTP 503: full"):
        client.score(CONVERSATIONS[:1])
    assert sleeps == []  # a wait past the deadline is not even started
    client.close()


def test_client_errors_are_raised_at_once_and_named():
    script = Script()
    client, _ = scripted(script, max_items_per_call=1)
    with pytest.raises(InvalidInput) as bad:
        client.score([CONVERSATIONS[0], []])  # the second chunk (item 1) is the bad one: its item 0
    assert bad.value.message == "conversations[1]: the conversation is empty"  # the call's index, as in-process
    assert client.stats["retries"] == 0
    unnamed = httpx.Response(
        404, json={"error": {"code": "unknown_model", "message": "no model 'x'", "request_id": "r"}}
    )
    client2, _ = scripted(Script(unnamed))
    with pytest.raises(UnknownModel, match=r"^conversations\[0:2\]: no model 'x'$"):  # names no item: the chunk
        client2.score(CONVERSATIONS[:2])
    client2.close()
    with pytest.raises(InvalidInput, match="expected a list"):
        client.score("not a list")
    client.close()


def test_sync_call_inside_an_event_loop_points_to_the_async_api():
    client, _ = scripted(Script())

    async def inside():
        with pytest.raises(RuntimeError, match="await the async method"):
            client.score(CONVERSATIONS[:1])
        return await client.ascore(CONVERSATIONS[:1])

    assert asyncio.run(inside()) == expected_lengths(CONVERSATIONS[:1])


# ---------------------------------------------------------------- against the served app


@pytest.fixture(scope="module")
def clients(served):
    base = f"http://127.0.0.1:{served['port']}"
    http = RewardClient.http(base, api_key=API_KEY, model="rm", max_items_per_call=4)
    handle = RewardClient.handle("scoring", model="rm", max_items_per_call=4)
    yield {"http": http, "handle": handle}
    http.close()
    handle.close()


@pytest.mark.parametrize("transport", ["http", "handle"])
def test_rewards_equal_load_model_over_both_transports(served, clients, transport):
    client = clients[transport]
    convs = CONVERSATIONS * 2  # 12 items: 3 chunks
    expected = served["models"]["rm"].score(convs)
    assert close(client.score(convs), expected)
    assert close(asyncio.run(client.ascore(convs)), expected)
    cmp = client.compare(ITEMS)
    want = served["models"]["rm"].compare(ITEMS)
    assert [c["winner"] for c in cmp] == [w.winner for w in want]
    assert close([c["prob_a"] for c in cmp], [w.prob_a for w in want])


@pytest.mark.parametrize("transport", ["http", "handle"])
def test_judge_and_unknown_model_over_both_transports(served, transport):
    base = f"http://127.0.0.1:{served['port']}"
    make = {
        "http": lambda m: RewardClient.http(base, api_key=API_KEY, model=m),
        "handle": lambda m: RewardClient.handle("scoring", model=m),
    }[transport]
    with make("judge") as judge:
        got = judge.judge(ITEMS, debias=True)
        want = served["models"]["judge"].judge(ITEMS, debias=True)
        assert close([v["prob_a"] for v in got], [w.prob_a for w in want])
    with make("nope") as ghost, pytest.raises(UnknownModel, match="'nope' is not served"):
        ghost.score(CONVERSATIONS[:1])


RESULT_KEYS = ["prob_a", "reward_a", "reward_b", "text", "text_swapped", "truncated", "winner"]


def assert_same_results(over_http: list[dict], over_handle: list[dict]) -> None:
    """Key for key the same: every key present on both, floats within TOL (the two calls may be
    batched differently), everything else equal."""
    assert [sorted(r) for r in over_http] == [sorted(r) for r in over_handle] == [RESULT_KEYS] * len(over_http)
    for a, b in zip(over_http, over_handle):
        for key in RESULT_KEYS:
            if isinstance(a[key], float) or isinstance(b[key], float):
                assert abs(a[key] - b[key]) <= TOL, (key, a, b)
            else:
                assert a[key] == b[key], (key, a, b)


def test_both_transports_answer_the_same_keys_values_and_errors(served, clients):
    """compare (a reward model's and a critic's), judge (both modes) and score give the same results
    over HTTP and the handle; a bad conversation is named alike by both and by load_model."""
    from cluster.core.errors import InvalidInput

    base = f"http://127.0.0.1:{served['port']}"
    rm_http, rm_handle = clients["http"], clients["handle"]
    with (
        RewardClient.http(base, api_key=API_KEY, model="judge") as critic_http,
        RewardClient.handle("scoring", model="judge") as critic_handle,
    ):
        assert_same_results(rm_http.compare(ITEMS), rm_handle.compare(ITEMS))
        assert_same_results(critic_http.compare(ITEMS), critic_handle.compare(ITEMS))
        assert_same_results(critic_http.judge(ITEMS, debias=True), critic_handle.judge(ITEMS, debias=True))
        assert_same_results(critic_http.judge(ITEMS, mode="generate"), critic_handle.judge(ITEMS, mode="generate"))
        assert_same_results(asyncio.run(critic_http.ajudge(ITEMS)), asyncio.run(critic_handle.ajudge(ITEMS)))
    assert close(rm_http.score(CONVERSATIONS), rm_handle.score(CONVERSATIONS))
    bad = CONVERSATIONS[:5] + [[CONVERSATIONS[0][0], {"role": "bot", "content": "hi"}]]  # item 5, in a chunk [4:6]
    with pytest.raises(InvalidInput) as in_process:
        served["models"]["rm"].score(bad)
    assert in_process.value.message.startswith("conversations[5][1].role: unknown role 'bot'")
    for client in (rm_http, rm_handle):
        with pytest.raises(InvalidInput) as err:
            client.score(bad)
        assert err.value.message == in_process.value.message


# ---------------------------------------------------------------- reliability


def make_client(served, transport: str, model: str, **options) -> RewardClient:
    if transport == "http":
        return RewardClient.http(f"http://127.0.0.1:{served['port']}", api_key=API_KEY, model=model, **options)
    return RewardClient.handle("scoring", model=model, **options)


@pytest.mark.reliability  # with tests/reliability/test_reliability_serve.py's SIGKILLs: a fault-injection test
@pytest.mark.parametrize("transport", ["handle", "http"])
def test_a_replica_killed_mid_stream_loses_no_reward(served, transport):
    """Ten callers stream batches while one of the two RM replicas is killed: every call still gets
    its rewards (retried onto the surviving replica), in order, each exactly once."""
    import ray
    from ray import serve

    convs = CONVERSATIONS * 4
    expected = served["models"]["rm"].score(convs)
    client = make_client(
        served, transport, "rm", max_items_per_call=2, max_concurrency=4, backoff_s=0.05, deadline_s=120
    )
    [victim] = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "reward-rm#" in a["name"] and "SERVE_REPLICA" in a["name"]
    ][:1]

    async def stream():
        async def caller() -> list:  # keeps both replicas busy for 3 s
            out, end = [], time.monotonic() + 3.0
            while time.monotonic() < end:
                out.append(await client.ascore(convs))
            return out

        callers = [asyncio.create_task(caller()) for _ in range(8)]
        await asyncio.sleep(1.0)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        return [r for batch in await asyncio.gather(*callers) for r in batch]

    results = asyncio.run(stream())
    # every call returned all its rewards, right and in order, although a replica died under load
    # (a call caught on it is sent again: by Serve's router, the ingress or, past its deadline, the client)
    assert len(results) >= 8 and all(close(r, expected) for r in results)
    alive = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    assert victim not in alive  # the kill really happened
    client.close()
    deadline = 120
    while deadline > 0:  # Serve replaces the replica; leave the app as the other tests expect it
        app = serve.status().applications["scoring"]
        rm = app.deployments["reward-rm"]
        if app.status == "RUNNING" and rm.status == "HEALTHY" and rm.replica_states.get("RUNNING", 0) == 2:
            break
        asyncio.run(asyncio.sleep(0.5))
        deadline -= 0.5


@pytest.mark.parametrize("transport", ["handle", "http"])
def test_overloaded_critic_queue_backs_off_and_finishes(served, transport):
    """judge: max_ongoing_requests=1, max_queued_requests=1. Eight concurrent generate calls
    overflow it; the ingress feeds them to the replica as it frees (admission), so every call
    completes without the client ever being refused (before issue 14 it met 503s and retried)."""
    client = make_client(served, transport, "judge", max_concurrency=8, backoff_s=0.05, deadline_s=180)
    items = ITEMS * 4
    expected = served["models"]["judge"].judge(items, mode="generate")

    async def burst():
        return await asyncio.gather(*(client.ajudge(items, mode="generate") for _ in range(8)))

    results = asyncio.run(burst())
    assert all([v["winner"] for v in r] == [w.winner for w in expected] for r in results)
    assert client.stats["retries"] == 0 and client.stats["calls"] == 8
    client.close()


# ---------------------------------------------------------------- framework adapters, as the frameworks call them


def load_file(path, name: str):
    """How verl (`get_custom_reward_fn`) and OpenRLHF load a reward function: from a file path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("custom_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.fixture
def scoring_env(served, monkeypatch):
    monkeypatch.setenv("SCORING_URL", f"http://127.0.0.1:{served['port']}")
    monkeypatch.setenv("SCORING_API_KEY", API_KEY)
    monkeypatch.setenv("SCORING_MODEL", "rm")


def test_verl_compute_score_single_and_batched(served, scoring_env):
    import cluster.client.verl_reward as verl_module

    rm = served["models"]["rm"]
    single = load_file(verl_module.__file__, "compute_score")
    reward = single(
        data_source="hh",
        solution_str="Paris.",
        ground_truth=None,
        extra_info={"question": "What is the capital of France?"},
    )
    [want] = rm.score(
        [[{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]]
    )
    assert abs(reward - want) <= TOL
    batched = load_file(verl_module.__file__, "compute_score_batch")
    convs = CONVERSATIONS[:3]
    got = batched(
        data_sources=["hh"] * 3,
        solution_strs=[c[-1]["content"] for c in convs],
        ground_truths=[None] * 3,
        extra_infos=[{"messages": c[:-1]} for c in convs],
    )
    assert close(got, rm.score(convs))
    with pytest.raises(InvalidInput, match=r"extra_info\[0\]: a reward model needs the prompt"):
        single(data_source="hh", solution_str="x", ground_truth=None, extra_info={})


def test_openrlhf_reward_func_file(served, scoring_env):
    import torch

    import cluster.client.openrlhf_reward_func as openrlhf_module

    rm = served["models"]["rm"]
    queries = [rm.encoder.render(c, "q", add_generation_prompt=False) for c in CONVERSATIONS[:4]]
    out = load_file(openrlhf_module.__file__, "reward_func")(queries, ["p"] * 4, [""] * 4)
    assert isinstance(out["rewards"], torch.Tensor) and out["rewards"].shape == (4,)
    assert close(out["rewards"].tolist(), rm.score(queries))


# ---------------------------------------------------------------- calibration and the PPO loop example


def test_calibrate_measures_mean_and_std(served, tmp_path, capsys):
    import statistics

    from cluster.cli.main import main

    rm = served["models"]["rm"]
    rows = [{"conversations": c} for c in CONVERSATIONS]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = main(
        [
            "calibrate",
            str(tmp_path / "c.jsonl"),
            str(tmp_path / "scores"),
            "--model",
            str(served["paths"][0]),
            "--out",
            str(tmp_path / "cal.json"),
            "--no-progress",
            "--num-gpus",
            "0",
            "--num-cpus",
            "0.5",
            "--tokenizer-num-cpus",
            "0.25",
        ]
    )
    assert rc == 0
    result = json.loads((tmp_path / "cal.json").read_text())
    scores = rm.score(CONVERSATIONS)
    assert result["count"] == len(scores)
    assert result["mean"] == pytest.approx(statistics.fmean(scores), abs=TOL)
    assert result["std"] == pytest.approx(statistics.pstdev(scores), abs=TOL)
    assert result["shaping"] == {"normalize": {"mean": result["mean"], "std": result["std"]}}
    assert "normalize: {mean:" in capsys.readouterr().out


@pytest.mark.parametrize("transport", ["handle", "http", "naive"])
def test_ppo_reward_loop_example_small(served, transport):

    spec_path = REPO / "examples" / "ppo_reward_loop.py"
    run_loop = load_file(spec_path, "run_loop")
    corpus = CONVERSATIONS * 3
    stats = run_loop(
        corpus,
        transport,
        actors=2,
        steps=2,
        batch_size=5,
        url=f"http://127.0.0.1:{served['port']}",
        api_key=API_KEY,
        model="rm",
        verbose=False,
    )
    expected = served["models"]["rm"].score(corpus)
    assert stats["rewards"] == 2 * 2 * 5 and stats["rewards_per_s"] > 0 and stats["p99_ms"] >= stats["p50_ms"]
    for step in stats["steps"]:
        for result in step:  # every reward is the one for the response it was asked for, in order
            assert close(result["rewards"], [expected[i] for i in result["indices"]])


# ---------------------------------------------------------------- shaping and ensembles (config + the ingress's logic)


def test_shaping_and_ensemble_config_and_arithmetic():
    from cluster.core.config import AppConfig, ConfigError, Ensemble, Shaping

    shaping = Shaping(normalize={"mean": 1.0, "std": 2.0}, clip=(-1.0, 1.0))
    assert shaping.apply([0.0, 2.0, 9.0]) == [-0.5, 0.5, 1.0]
    assert Ensemble(name="m", members=[{"model": "a", "weight": 3}, {"model": "b"}]).combine(
        [[1.0, 2.0], [5.0, 6.0]]
    ) == [2.0, 3.0]  # (3*1 + 5)/4, (3*2 + 6)/4
    with pytest.raises(ConfigError, match="clip: the low bound must be below"):
        Shaping.parse({"clip": [1, 1]})
    with pytest.raises(ConfigError, match="std"):
        Shaping.parse({"normalize": {"mean": 0, "std": 0}})
    models = [{"name": "a", "path": "x", "kind": "reward"}, {"name": "j", "path": "y", "kind": "critic"}]
    with pytest.raises(ConfigError, match="member 'j' is a critic"):
        AppConfig.parse({"models": models, "ensembles": [{"name": "m", "members": [{"model": "j"}]}]})
    with pytest.raises(ConfigError, match="repeated: \\['a'\\]"):
        AppConfig.parse({"models": models, "ensembles": [{"name": "a", "members": [{"model": "a"}]}]})
    with pytest.raises(ConfigError, match="shaping applies to reward models only"):
        AppConfig.parse({"models": [{**models[1], "shaping": {"clip": [0, 1]}}]})
