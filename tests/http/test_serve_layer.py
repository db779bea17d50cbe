"""The Serve layer's own objects, in-process, with no Ray cluster: every route through the ingress
(`deployments/ingress.py`), the request core over deployment handles (`deployments/handles.py`),
the tokenizer deployment and the model replicas answers as the in-process app (`inproc`: the same
routes over `local_service`) does.

The app is the graph `deployments.app:build_app` binds for `served`'s config (tests/conftest.py),
built as Serve's replicas build it (helpers.py: ServeInProcess), each on an event loop of its own:
`Tokenizer(specs)`, one `ModelReplica(spec)` per model reconfigured with its deployment's user_config,
and the `@serve.ingress` `Ingress(config, tokenizer, replicas)` with its FastAPI app from
`__serve_build_asgi_app__`; the handles between them are `FakeHandle`s over those objects (calls sent
at once, awaited or `.result()`ed; arguments, results and errors copied as Ray serializes them;
errors delivered as raised, which `from_ray` reads as it reads Serve's RayTaskError). Each replica's
class comes from its own copy of its module, as in its own process: a `@serve.batch` queue is the
class's, and replicas of one class in one process would share it (a batch runs on its first call's
`self`). `ray.serve.metrics` records without a connected worker, so the replicas' metrics are kept as
they are; `@serve.batch` reads a replica context only for one warning, which is skipped.

Not here, and tested on a live cluster in tests/ray/test_serve.py: Serve's proxy (its request id is
sent here as the proxy sends it, in x-request-id), routing between replicas, back-pressure, resources,
live reconfigure and metrics export."""

from __future__ import annotations

import uuid

import pytest
from helpers import API_KEY, CONVERSATIONS, TOL, ServeInProcess, app_args

ITEMS = [
    {"prompt": "What is the capital of France?", "response_a": "Paris.", "response_b": "London."},
    {"prompt": "Add 2 and 3.", "response_a": "5", "response_b": "2 + 3 = 6, because addition."},
]

ROUTES = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/rewards", {"conversations": CONVERSATIONS}),
    ("POST", "/v1/rewards", {"model": "rm-gemma", "conversations": [CONVERSATIONS[0], CONVERSATIONS[1]]}),
    ("POST", "/v1/rewards", {"model": "rm-attrs", "conversations": CONVERSATIONS[:2]}),
    ("POST", "/v1/rewards", {"model": "rm-bert", "conversations": [CONVERSATIONS[0], CONVERSATIONS[3]]}),
    ("POST", "/v1/rewards", {"model": "rm-mix", "conversations": [CONVERSATIONS[0], CONVERSATIONS[1]]}),
    ("POST", "/v1/compare", {"items": ITEMS}),
    ("POST", "/v1/compare", {"model": "judge", **ITEMS[0]}),
    ("POST", "/v1/judge", {"items": ITEMS, "debias": True}),
    ("POST", "/v1/judge", {"items": ITEMS[:1], "mode": "generate", "debias": True}),
    ("POST", "/get_reward", {"query": ["<|begin_of_text|>hello", "plain text"], "prompts": ["", ""]}),
    ("POST", "/classify", {"model": "rm-attrs", "messages": CONVERSATIONS[0]}),
    ("POST", "/v1/rewards", {"conversations": [[{"role": "bot", "content": "x"}]]}),
    ("POST", "/v1/judge", {"model": "rm-mix", "items": ITEMS}),
    # the other protocols' routes (tests/http/test_client_*.py replay their clients in-process)
    ("POST", "/get_reward", {"query": []}),
    (
        "POST",
        "/classify",
        {
            "model": "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2",
            "input": [[5, 6, 7], "hello"],
            "truncate_prompt_tokens": 2,
        },
    ),
    ("POST", "/classify", {"model": "rm", "input": "hello " * 600}),
    ("POST", "/pooling", {"model": "rm-attrs", "messages": CONVERSATIONS[0], "task": "classify"}),
    ("POST", "/score", {"model": "rm", "text_1": "q", "text_2": ["a", "b"], "use_activation": False}),
    ("POST", "/rerank", {"model": "rm", "query": "q", "documents": ["a", "bb", "ccc"], "top_n": 2}),
    ("POST", "/tokenize", {"model": "rm", "messages": CONVERSATIONS[0]}),
    ("POST", "/classify", {"model": "~/models/Skywork-Reward-Llama-3.1-8B-v0.2", "text": ["hello", "world"]}),
    ("POST", "/v1/embeddings", {"model": "rm", "input": ["hello", [5, 6, 7]]}),
    ("POST", "/v1/classify", {"model": "rm-attrs", "input": "hello"}),
    ("POST", "/predict", {"inputs": [["hello"], ["q", "a"]], "raw_scores": True}),
    ("POST", "/predict", {"inputs": "hello " * 600}),
    ("POST", "/generative_scoring", {"query": "Is it right? ", "items": ["yes", "no"], "label_token_ids": [5, 9]}),
    ("POST", "/generative_scoring", {"model": "rm", "query": "q", "items": ["a"], "label_token_ids": [5]}),
    ("POST", "/v1/score", {"query": [1, 2, 3], "items": [[4], [5, 6]], "label_token_ids": [7, 8], "model": "judge"}),
    ("POST", "/slime/reward", {"prompt": "What is 2 + 2?", "response": "4", "label": "4"}),
    ("POST", "/slime/reward?model=rm-mix", {"prompt": CONVERSATIONS[0][:1], "response": "Paris.", "label": None}),
    ("GET", "/nothing/here", None),
]
ROUTE_IDS = [f"{m} {p}" for m, p, _ in ROUTES]


def same(a, b) -> bool:
    """The same answer: equal keys and values, numbers to TOL; ids and timestamps are each app's own."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) - {"id", "created", "request_id"}
        return keys == set(b) - {"id", "created", "request_id"} and all(same(a[k], b[k]) for k in keys)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= TOL
    return a == b


@pytest.fixture(scope="module")
def serve_layer(inproc):
    """`served`'s app (the same config and model directories as `inproc`), its deployments built in
    this process over fake handles."""
    import ray

    from deployments.app import build_app

    ray_was_up = ray.is_initialized()  # a whole run may have started the ray suites' cluster first
    app = ServeInProcess(build_app(app_args(*inproc["paths"])))
    yield {"client": app.client({"Authorization": f"Bearer {API_KEY}"}), "app": app, "ray_was_up": ray_was_up}
    app.stop()


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
def test_every_route_through_the_serve_layer_answers_as_in_process(serve_layer, inproc, method, path, body):
    """The same app over the Serve layer (ingress, handles, tokenizer deployment, replicas) and over
    in-process models: the same status and body, numbers to TOL (errors: the same code and message,
    with the request id Serve's proxy sent)."""
    request_id = uuid.uuid4().hex  # Serve's proxy sends its id to the ingress as x-request-id
    layered = serve_layer["client"].request(method, path, json=body, headers={"x-request-id": request_id})
    local = inproc["client"].request(method, path, json=body)
    assert layered.status_code == local.status_code, (layered.text, local.text)
    assert same(layered.json(), local.json()), (layered.text, local.text)
    if layered.status_code >= 400 and isinstance(layered.json().get("error"), dict):
        assert layered.json()["error"]["request_id"] == request_id


def test_requests_go_through_the_handles(serve_layer):
    """The answers above came over the handles: a request is a flow of the ingress's gatherer and a
    `@serve.batch`ed call to the model's replica; and nothing connected to a Ray cluster."""
    import ray

    app = serve_layer["app"]
    replica, before = app.replicas["reward-rm"], app.ingress.get_stats()
    calls = replica.stats["calls"]
    r = serve_layer["client"].post("/v1/rewards", json={"conversations": CONVERSATIONS[:2]})
    assert r.status_code == 200, r.text
    assert app.ingress.get_stats()["flows"] == before["flows"] + 1
    assert replica.stats["calls"] == calls + 1
    assert replica.batching["batch_max_tokens"] == 4096  # reconfigured with its deployment's user_config
    assert ray.is_initialized() == serve_layer["ray_was_up"]
