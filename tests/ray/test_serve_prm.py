"""Process reward models and a pointwise judge behind the Serve app: HTTP through Serve's proxy and
the handle API (RewardClient.handle) answer what the in-process models answer, one request or many
at once (gathered into shared flows), and the replicas run the same ops as every other kind."""

from __future__ import annotations

import asyncio

import pytest
from helpers import API_KEY, deploy

from cluster.client.reward_client import RewardClient
from cluster.engine.loading import load_model

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]  # `pytest -m slow` (CI runs it)

APP, PREFIX = "scoring-prm", "/prm"
SHEPHERD = {
    "step_tag": "ки",
    "step_format": "Step {index}: {step} {tag}",
    "step_joiner": "\n",
    "prm_template": "{prompt} {response}",
    "step_labels": ["+", "-"],
}
ITEMS = [
    {"prompt": "Add 2 and 3.", "steps": ["2 + 3 = 5.", "The answer is 5."]},
    {"prompt": "What is the capital of France?", "response": "France is in Europe.\n\nIts capital is Paris.\n\nParis."},
    {"prompt": "Name a prime number.", "steps": ["2 is only divisible by 1 and itself, so 2 is prime."]},
]
RATE = [
    {"prompt": "Add 2 and 3.", "response": "5"},
    {"prompt": "What is the capital of France?", "response": "The capital of France is Paris."},
]
TOL = 1e-5  # the same computation on both sides (fp32): only batch composition differs


@pytest.fixture(scope="module")
def prm_app(serve_port, tmp_path_factory):
    import httpx
    from ray import serve

    from cluster.tiny import build_tiny_model, build_tiny_prm

    root = tmp_path_factory.mktemp("prm-app")
    qwen, shepherd = build_tiny_prm(root / "qwen", style="qwen"), build_tiny_prm(root / "shepherd", style="shepherd")
    judge = build_tiny_model(root / "judge", kind="pointwise")
    genrm = build_tiny_model(root / "genrm", kind="generative")
    cpu = {"num_gpus": 0, "num_cpus": 0.25, "max_ongoing_requests": 16, "max_queued_requests": 64}
    specs = [
        {
            "name": "qwen-prm",
            "path": str(qwen),
            "kind": "prm",
            "trust_remote_code": True,
            "step_tag": "<extra_0>",
            "dtype": "float32",
            "max_length": 1024,
            "max_batch_tokens": 4096,
        },
        {
            "name": "shepherd-prm",
            "path": str(shepherd),
            "kind": "prm",
            "dtype": "float32",
            **SHEPHERD,
            "max_length": 1024,
            "max_batch_tokens": 4096,
        },
        {
            "name": "judge",
            "path": str(judge),
            "kind": "pointwise",
            "dtype": "float32",
            "max_length": 1024,
            "max_batch_tokens": 4096,
            "max_new_tokens": 12,
        },
        {"name": "genrm", "path": str(genrm), "kind": "generative", "dtype": "float32", "max_length": 1024},
    ]
    deploy(
        {
            "name": APP,
            "route_prefix": PREFIX,
            "import_path": "deployments.app:build_app",
            "args": {
                "api_keys": [API_KEY],
                "tokenizer": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.1},
                "models": [{**s, "replicas": cpu} for s in specs],
            },
        }
    )
    local = {s["name"]: load_model({k: v for k, v in s.items()}) for s in specs}
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{serve_port}{PREFIX}", timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    yield {"client": client, "local": local, "port": serve_port}
    client.close()
    serve.delete(APP)


def close(a, b):
    return len(a) == len(b) and all(abs(x - y) <= TOL for x, y in zip(a, b))


@pytest.mark.parametrize("model", ["qwen-prm", "shepherd-prm"])
def test_step_rewards_over_http_equal_in_process(prm_app, model):
    want = prm_app["local"][model].step_rewards(ITEMS)
    body = prm_app["client"].post("/v1/step_rewards", json={"model": model, "items": ITEMS}).json()
    assert body["model"] == model and body["aggregate"] == "min"
    for got, w in zip(body["results"], want):
        assert close(got["step_rewards"], w.step_rewards)
        assert got["num_steps"] == len(w.step_rewards) and got["weakest_step"] == w.weakest_step
    # /v1/rewards: the aggregate as the reward, with the steps beside (any reward client gets a PRM's outcome reward)
    convs = [[{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "2 + 3 = 5.\n\nSo 5."}]]
    r = prm_app["client"].post("/v1/rewards", json={"model": model, "conversations": convs}).json()
    w = prm_app["local"][model].step_rewards(convs)[0]
    assert close(r["scores"], [w.score]) and close(r["step_rewards"][0], w.step_rewards)


def test_many_requests_at_once_are_gathered_and_each_answered_alike(prm_app):
    """Concurrent requests for both PRMs and the judge share flows; each gets its own items' values."""
    import httpx

    want = {m: [r.step_rewards for r in prm_app["local"][m].step_rewards(ITEMS)] for m in ("qwen-prm", "shepherd-prm")}
    want_rate = [r.expected for r in prm_app["local"]["judge"].rate(RATE)]

    async def burst():
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{prm_app['port']}{PREFIX}",
            timeout=120,
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as c:
            calls = [
                c.post("/v1/step_rewards", json={"model": m, "items": [ITEMS[i % 3]]})
                for i in range(12)
                for m in ("qwen-prm", "shepherd-prm")
            ]
            calls += [c.post("/v1/rate", json={"items": [RATE[i % 2]]}) for i in range(6)]
            return await asyncio.gather(*calls)

    answers = asyncio.run(burst())
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    for k, a in enumerate(answers[:24]):
        i, m = divmod(k, 2)
        assert close(a.json()["results"][0]["step_rewards"], want[("qwen-prm", "shepherd-prm")[m]][i % 3])
    for i, a in enumerate(answers[24:]):
        assert abs(a.json()["results"][0]["expected"] - want_rate[i % 2]) <= TOL


def test_ratings_over_http_equal_in_process(prm_app):
    judge = prm_app["local"]["judge"]
    body = prm_app["client"].post("/v1/rate", json={"items": RATE}).json()
    assert body["ratings"] == [str(i) for i in range(1, 11)]
    for got, w in zip(body["results"], judge.rate(RATE)):
        assert abs(got["expected"] - w.expected) <= TOL and got["rating"] == w.rating and close(got["probs"], w.probs)
    body = prm_app["client"].post("/v1/rate", json={"items": RATE, "mode": "generate"}).json()
    for got, w in zip(body["results"], judge.rate(RATE, mode="generate")):
        assert got["text"] == w.text and got["rating"] == w.rating
    bad = prm_app["client"].post("/v1/rate", json={"items": [{"prompt": "q"}]})
    assert bad.status_code == 422 and bad.json()["error"]["message"] == "items[0].response: missing"
    wrong = prm_app["client"].post("/v1/step_rewards", json={"model": "judge", "items": ITEMS})
    assert wrong.status_code == 422
    assert "is a pointwise judge; this route needs a prm" in wrong.json()["error"]["message"]


def test_the_handle_api_through_reward_client(prm_app):
    with RewardClient.handle(APP, model="qwen-prm", max_items_per_call=2) as client:  # 3 items: two calls
        got = client.step_rewards(ITEMS, aggregate="last")
    want = prm_app["local"]["qwen-prm"].step_rewards(ITEMS, aggregate="last")
    assert [g["score"] for g in got] == pytest.approx([w.score for w in want], abs=TOL)
    assert all(close(g["step_rewards"], w.step_rewards) for g, w in zip(got, want))
    with RewardClient.http(f"http://127.0.0.1:{prm_app['port']}{PREFIX}", api_key=API_KEY, model="judge") as client:
        rated = client.rate(RATE)
    assert [r["expected"] for r in rated] == pytest.approx(
        [w.expected for w in prm_app["local"]["judge"].rate(RATE)], abs=TOL
    )


def test_ray_data_via_serve_scores_prm_and_judge_rows_like_in_process(prm_app, tmp_path):
    """A corpus scored on the served replicas (`via_serve`) equals the in-process models: the PRM's
    list columns and the judge's expected rating, rating and probabilities."""
    import json

    from cluster.data.pipeline import read_scores, score_corpus

    fast = {
        "progress": False,
        "batch_rows": 2,
        "rows_per_shard": 2,
        "tokenizer_num_cpus": 0.25,
        "num_cpus": 0.25,
        "num_gpus": 0,
        "via_serve": APP,
    }
    rows = [{"id": f"s{i}", **item} for i, item in enumerate(ITEMS * 2)]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = score_corpus(tmp_path / "steps.jsonl", tmp_path / "prm", "shepherd-prm", **fast)
    table, want = read_scores(tmp_path / "prm"), prm_app["local"]["shepherd-prm"].step_rewards(ITEMS * 2)
    assert summary["kind"] == "prm" and table["id"].to_pylist() == [r["id"] for r in rows]
    assert all(close(g, w.step_rewards) for g, w in zip(table["step_rewards"].to_pylist(), want))
    assert close(table["score"].to_pylist(), [w.score for w in want])
    assert table["weakest_step"].to_pylist() == [w.weakest_step for w in want]

    rated = [{"id": f"r{i}", **item} for i, item in enumerate(RATE * 2)]
    (tmp_path / "rate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rated))
    summary = score_corpus(tmp_path / "rate.jsonl", tmp_path / "pw", "judge", **fast)
    table, want = read_scores(tmp_path / "pw"), prm_app["local"]["judge"].rate(RATE * 2)
    assert summary["kind"] == "pointwise"
    assert close(table["score"].to_pylist(), [w.expected for w in want])
    assert table["rating"].to_pylist() == [w.rating for w in want]
    assert all(close(g, w.probs) for g, w in zip(table["rating_probs"].to_pylist(), want))

    # generate mode on the replica's continuous-batching loop: the ratings it writes, its answers kept
    score_corpus(tmp_path / "rate.jsonl", tmp_path / "pw-gen", "judge", mode="generate", **fast)
    table, want = read_scores(tmp_path / "pw-gen"), prm_app["local"]["judge"].rate(RATE * 2, mode="generate")
    assert table["judge_texts"].to_pylist() == [[w.text] for w in want]
    assert table["rating"].to_pylist() == [w.rating for w in want]
    assert close([x for x in table["score"].to_pylist() if x is not None], [w.expected for w in want if w.probs])


def test_openai_client_chat_completions_of_a_pointwise_and_a_generative_judge_through_serve(prm_app):
    """The `openai` package through Serve's proxy to the pointwise judge's and the generative
    judge's replicas: concurrent greedy completions equal the in-process model's (its continuous
    batching loop is compared with one-at-a-time `generate` in tests/http/test_client_openai.py),
    and a seeded sample is the in-process seeded sample."""
    import asyncio

    import openai

    from cluster.core.chat import ChatJob

    convs = [[{"role": "user", "content": f"Judge answer {i}: " + "word " * i}] for i in range(6)]

    async def main():
        base = f"http://127.0.0.1:{prm_app['port']}{PREFIX}/v1"
        async with openai.AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0) as c:
            greedy = [
                c.chat.completions.create(model=m, messages=v, max_tokens=12) for m in ("judge", "genrm") for v in convs
            ]
            seeded = c.chat.completions.create(model="genrm", messages=convs[1], max_tokens=12, temperature=1.2, seed=5)
            return await asyncio.gather(*greedy, seeded)

    *answers, sample = asyncio.run(main())
    for (model, conv), answer in zip([(m, v) for m in ("judge", "genrm") for v in convs], answers):
        local = prm_app["local"][model].runner.chat_runner.chat(ChatJob(messages=conv, max_tokens=12))
        assert answer.choices[0].message.content == local.choices[0].text
        assert answer.usage.completion_tokens == local.completion_tokens
    job = ChatJob(messages=convs[1], max_tokens=12, temperature=1.2, seed=5)
    assert sample.choices[0].message.content == prm_app["local"]["genrm"].chat(**vars(job)).choices[0].text
