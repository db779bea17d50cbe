"""Hostile bodies against every route of the HTTP app, in-process (no Ray): hypothesis-generated
JSON values, near-valid bodies (a valid body per route with fields mutated), raw bytes, wrong
content types, invalid UTF-8, wrong methods, unknown routes, query strings, missing / wrong keys.

Every response, whatever was sent, must be:
- below 500 (a 5xx means a route met an exception nobody mapped to the client's mistake);
- JSON in the route's documented error shape when it is not a 2xx: ours
  `{"error": {"code", "message", "request_id"}}`; vLLM's `{"error": {message, type, param, code}}`;
  SGLang's flat `{"object": "error", message, type, param, code}`; TEI's `{"error", "error_type"}`
  (cluster/http/app.py, vllm.py, sglang.py, tei.py);
- free of traceback text and of this machine's paths (the repository, the interpreter's prefix,
  the tiny models' directory), and with a bounded message (no wholesale echo of the input).

Reproducible (hypothesis derandomized, no example database); the figures are printed at the end
of the run (tests/conftest.py `figures`). Run with `pytest -m reliability tests/reliability/test_reliability_fuzz.py`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import math
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import httpx
import pytest
from helpers import API_KEY, CONVERSATIONS
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import cluster

pytestmark = pytest.mark.reliability

MAX_MESSAGE = 2_000  # the most characters an error message may carry
MAX_ERROR_BODY = 4_000  # the most bytes a whole error body may carry
MAX_REQUEST_BYTES = 200_000  # conftest.app_args: what the app is configured to read at most
FORBIDDEN = ("Traceback", 'File "', '.py", line')


def fuzz_settings(n: int) -> settings:
    """Reproducible (derandomized, no example database). No shrinking: the failing request is in
    the assertion's message already, and shrinking re-runs models for minutes."""
    return settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )


# ----------------------------------------------------------------------------- the routes

CONV = CONVERSATIONS[0]  # user, assistant
SYSTEM_CONV = CONVERSATIONS[2]  # system, user, assistant
ITEM = {"prompt": "What is the capital of France?", "response_a": "Paris.", "response_b": "London."}
TEXT = "<|user|>What is 2 + 2?<|assistant|>4"

# (method, path) -> valid bodies (None: a route that takes no body). Every route the app serves is
# here: test_every_served_route_is_fuzzed fails when one is added without its bodies.
ROUTES: dict[tuple[str, str], list] = {
    ("GET", "/healthz"): [None],
    ("GET", "/v1/models"): [None],
    ("POST", "/v1/rewards"): [
        {"conversations": [CONV, CONVERSATIONS[1]]},
        {"model": "rm-gemma", "conversations": [CONV]},
        {"model": "rm-mix", "conversations": [CONV, TEXT]},
        {"model": "rm-attrs", "conversations": [SYSTEM_CONV]},
        {"model": "rm-bert", "conversations": [CONV]},
        {"conversations": [TEXT]},
    ],
    ("POST", "/v1/compare"): [
        dict(ITEM),
        {"items": [ITEM, ITEM]},
        {"model": "judge", "items": [ITEM]},
        {"model": "rm-mix", **ITEM},
    ],
    ("POST", "/v1/judge"): [
        {"items": [ITEM]},
        {"model": "judge", "items": [ITEM], "mode": "generate", "debias": True},
        {"items": [ITEM, ITEM], "mode": "logits", "debias": True},
    ],
    ("POST", "/v1/step_rewards"): [
        {"items": [{"prompt": "What is 2 + 2?", "steps": ["2 + 2 = 4.", "The answer is 4."]}]},
        {"model": "prm", "items": [{"prompt": "q", "response": "a\n\nb", "system": "s"}, CONV], "aggregate": "mean"},
    ],
    ("POST", "/v1/rate"): [
        {"items": [{"prompt": "What is 2 + 2?", "response": "4"}]},
        {"model": "rater", "items": [{"prompt": "q", "response": "a"}], "mode": "generate"},
    ],
    ("POST", "/get_reward"): [
        {"query": [TEXT, TEXT + " more"]},
        {"query": []},
        {"query": [TEXT], "prompts": ["What is 2 + 2?"], "labels": ["4"], "model": "rm-mix"},
    ],
    ("POST", "/classify"): [
        {"input": TEXT},
        {"input": ["a text", TEXT], "model": "rm-attrs", "use_activation": False},
        {"input": [1, 2, 3, 4]},
        {"input": [[1, 2], [3, 4, 5]], "truncate_prompt_tokens": 2},
        {"messages": CONV, "add_special_tokens": False},
        {"text": "hello"},
        {"text": [["What is 2 + 2?", "4"]], "rid": ["r1"]},
        {"input_ids": [1, 2, 3], "rid": "r1"},
    ],
    ("PUT", "/classify"): [{"text": "hello"}, {"input_ids": [[1, 2], [3]]}, {"input": TEXT}],
    ("POST", "/pooling"): [
        {"input": TEXT},
        {"input": [TEXT, "b"], "task": "classify"},
        {"messages": SYSTEM_CONV, "softmax": False},
        {
            "model": "prm",
            "input": "What is 2 + 2? 2 + 2 = 4.<extra_0>The answer is 4.<extra_0>",
            "task": "token_classify",
        },
    ],
    ("POST", "/score"): [
        {"text_1": "What is 2 + 2?", "text_2": ["4", "5"]},
        {"queries": ["q1", "q2"], "documents": ["a1", "a2"], "truncate_prompt_tokens": -1},
    ],
    ("POST", "/v1/score"): [
        {"data_1": "q", "data_2": "a"},
        {"query": "Is it right? ", "items": ["yes", "no"], "label_token_ids": [5, 9], "model": "judge"},
        {"query": [1, 2, 3], "items": [[4], [5, 6]], "label_token_ids": [7], "apply_softmax": True, "item_first": True},
    ],
    ("POST", "/generative_scoring"): [
        {"query": "Is it right? ", "items": ["yes", "no"], "label_token_ids": [5, 9]},
        {
            "model": "rater",
            "query": [1, 2, 3],
            "items": [[4], [5, 6]],
            "label_token_ids": [7],
            "apply_softmax": False,
            "item_first": True,
            "add_special_tokens": False,
        },
    ],
    ("POST", "/slime/reward"): [
        {"prompt": "What is 2 + 2?", "response": "4", "label": "4"},
        {"prompt": SYSTEM_CONV[:-1], "response": "print(5)", "label": None},
    ],
    ("POST", "/rerank"): [{"query": "What is 2 + 2?", "documents": ["4", "five", "22"], "top_n": 2}],
    ("POST", "/v1/rerank"): [{"query": "q", "documents": ["a"]}],
    ("POST", "/v2/rerank"): [{"query": "q", "documents": ["a", "b"], "use_activation": False}],
    ("POST", "/tokenize"): [
        {"prompt": TEXT},
        {"messages": CONV, "add_special_tokens": True},
        {"model": "rm-bert", "prompt": "hello"},
    ],
    ("GET", "/health"): [None],
    ("GET", "/version"): [None],
    ("POST", "/v1/embeddings"): [
        {"input": TEXT},
        {"input": ["a", "b"], "model": "default"},
        {"input": [[1, 2, 3]], "model": "rm-attrs"},
    ],
    ("POST", "/v1/classify"): [{"input": TEXT}, {"input": ["a", "b"], "model": "rm-attrs"}],
    ("POST", "/predict"): [
        {"inputs": TEXT},
        {"inputs": ["What is 2 + 2?", "4"], "raw_scores": True},
        {"inputs": [["a"], ["q", "a"]], "truncate": True, "truncation_direction": "Left"},
    ],
    ("POST", "/v1/chat/completions"): [
        {"model": "judge", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 4},
        {
            "model": "rater",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "q"}]},
            ],
            "max_completion_tokens": 3,
            "n": 2,
            "stop": ["\n"],
            "logprobs": True,
            "temperature": 0,
        },
        {
            "model": "judge",
            "messages": CONV,
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ],
    # FastAPI's documentation routes, where create_app serves them (else they are unknown paths)
    ("GET", "/openapi.json"): [None],
    ("GET", "/docs"): [None],
    ("GET", "/docs/oauth2-redirect"): [None],
    ("GET", "/redoc"): [None],
}
DOC_ROUTES = {("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc")}
OPEN_PATHS = {"/healthz", "/health"}
HTML_PATHS = {"/docs", "/docs/oauth2-redirect", "/redoc"}

GROUPS = {  # path -> the protocol module that serves it (its error style)
    **dict.fromkeys(
        ["/healthz", "/v1/models", "/v1/rewards", "/v1/compare", "/v1/judge", "/v1/step_rewards", "/v1/rate"], "ours"
    ),
    "/get_reward": "openrlhf",
    **dict.fromkeys(
        [
            "/classify",
            "/pooling",
            "/score",
            "/v1/score",
            "/rerank",
            "/v1/rerank",
            "/v2/rerank",
            "/tokenize",
            "/health",
            "/version",
            "/generative_scoring",
        ],
        "vllm",
    ),
    **dict.fromkeys(["/v1/embeddings", "/v1/classify"], "sglang"),
    "/predict": "tei",
    "/v1/chat/completions": "chat",
    "/slime/reward": "slime",
    **dict.fromkeys(["/openapi.json", *HTML_PATHS], "docs"),
}
STYLE_OF_GROUP = {
    "ours": "ours",
    "openrlhf": "ours",
    "docs": "ours",
    "unknown": "ours",
    "vllm": "vllm",
    "sglang": "sglang",
    "tei": "tei",
    "chat": "vllm",  # OpenAI's error body, as vLLM sends it
    "slime": "ours",
}
PATHS = sorted({p for _, p in ROUTES})
POST_ROUTES = sorted(k for k, bodies in ROUTES.items() if bodies != [None])
GET_ROUTES = sorted(k for k, bodies in ROUTES.items() if bodies == [None])
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "FOO", "get")


def group_of(path: str) -> str:
    return GROUPS.get(path.split("?")[0], "unknown")


def served_routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves (FastAPI's included routers unwrapped)."""
    out = set()
    stack = list(app.routes)
    while stack:
        route = stack.pop()
        if hasattr(route, "original_router"):
            stack.extend(route.original_router.routes)
        elif hasattr(route, "routes") and not hasattr(route, "methods"):
            stack.extend(route.routes)
        else:
            out.update((m, route.path) for m in (route.methods or ()) if m != "HEAD")
    return out


# ----------------------------------------------------------------------------- sending and checking


class Raw(str):
    """JSON text put into a body as it is (NaN, numbers of thousands of digits, deep nesting)."""


def dumps(value) -> bytes:
    """JSON as a hostile client writes it: NaN / Infinity literals, lone surrogates as escapes,
    Raw text verbatim."""

    def enc(v) -> str:
        if isinstance(v, Raw):
            return str(v)
        if isinstance(v, float) and not math.isfinite(v):
            return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        if isinstance(v, dict):
            return "{" + ",".join(f"{json.dumps(str(k))}:{enc(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list | tuple):
            return "[" + ",".join(enc(x) for x in v) + "]"
        return json.dumps(v)

    return enc(value).encode("utf-8")


class Request:
    def __init__(
        self,
        method: str,
        path: str,
        content: bytes | None = None,
        headers: dict | None = None,
        key: str | None = "header",
        query: str = "",
    ):
        self.method, self.path, self.content, self.query = method, path, content, query
        self.headers = dict(headers or {})
        if content is not None and not any(h.lower() == "content-type" for h in self.headers):
            self.headers["content-type"] = "application/json"
        self.key = key  # "header" | "query" | "basic" | None (none) | anything else: a wrong key
        if key == "header":
            self.headers.setdefault("authorization", f"Bearer {API_KEY}")
        elif key == "basic":
            self.headers["authorization"] = "Basic " + base64.b64encode(f"user:{API_KEY}".encode()).decode()
        elif key == "query":
            self.query = "&".join(q for q in (self.query, f"api_key={API_KEY}") if q)
        elif key is not None:
            self.headers["authorization"] = key

    @property
    def authorized(self) -> bool:
        return self.key in ("header", "query", "basic")

    def __repr__(self) -> str:
        body = None if self.content is None else self.content[:300]
        return f"{self.method} {self.path}?{self.query[:200]} key={self.key!r} headers={self.headers} body={body!r}"


async def _send_all(app, requests: list[Request]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://in-process", timeout=60) as client:
        out = []
        for r in requests:
            url = "http://in-process" + r.path + (f"?{r.query}" if r.query else "")  # "//x" stays a path
            out.append(await client.request(r.method, url, content=r.content, headers=r.headers))
        return out


class Fuzzer:
    """Sends requests to the app and checks every answer; counts what came back."""

    def __init__(self, app, internal_paths: list[str]):
        self.app = app
        self.internal = [p for p in internal_paths if p and len(p) > 1]
        self.statuses: Counter = Counter()
        self.tried: Counter = Counter()  # per route group
        self.five_xx = self.tracebacks = 0

    def send(self, *requests: Request) -> list[httpx.Response]:
        responses = asyncio.run(_send_all(self.app, list(requests)))
        for req, resp in zip(requests, responses):
            self.check(req, resp)
        return responses

    def check(self, req: Request, resp: httpx.Response) -> None:
        self.tried[group_of(req.path)] += 1
        self.statuses[resp.status_code] += 1
        text = resp.content.decode("utf-8", errors="replace")
        if resp.status_code >= 500:
            self.five_xx += 1
        assert resp.status_code < 500, f"{resp.status_code} for {req!r}: {text[:1000]}"
        leaked = [s for s in FORBIDDEN if s in text]
        if leaked:
            self.tracebacks += 1
        assert not leaked, f"traceback text {leaked} in the answer to {req!r}: {text[:2000]}"
        if not (200 <= resp.status_code < 300 and req.path == "/v1/models"):  # its cards' `root`: the model paths
            paths = [p for p in self.internal if p in text]
            assert not paths, f"internal path(s) {paths} in the answer to {req!r}: {text[:2000]}"
        if not req.authorized and req.path not in OPEN_PATHS:
            assert resp.status_code == 401, f"{resp.status_code} without a valid key for {req!r}: {text[:500]}"
        if 200 <= resp.status_code < 300:
            if resp.headers.get("content-type", "").startswith("text/event-stream"):  # a chat stream
                events = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
                assert events and events[-1] == "[DONE]", f"{req!r}: a stream that does not end: {text[-300:]}"
                for event in events[:-1]:
                    json.loads(event)  # each chunk is JSON
            elif req.method != "HEAD" and req.path not in HTML_PATHS and req.path != "/health":
                resp.json()  # a success is JSON
            return
        if 300 <= resp.status_code < 400:  # Starlette's redirect of `/route/` to `/route`, and no other
            location = resp.headers.get("location", "")
            assert resp.status_code == 307 and req.path.endswith("/"), f"{resp.status_code} for {req!r}: {location}"
            assert httpx.URL(location).path == req.path.rstrip("/"), f"redirect of {req!r} to {location}"
            assert API_KEY not in location, f"the redirect of {req!r} carries the API key: {location}"
            return
        if req.method == "HEAD" and not resp.content:
            return  # a HEAD answer has no body
        assert resp.headers.get("content-type", "").startswith("application/json"), (
            f"{resp.status_code} answered as {resp.headers.get('content-type')!r} for {req!r}: {text[:500]}"
        )
        assert len(resp.content) <= MAX_ERROR_BODY, f"{len(resp.content)}-byte error body for {req!r}: {text[:500]}"
        message = error_message(STYLE_OF_GROUP[group_of(req.path)], resp.status_code, resp.json())
        assert message and len(message) < MAX_MESSAGE, f"message of {len(message)} chars for {req!r}: {message[:300]}"


def error_message(style: str, status: int, body) -> str:
    """The body's message, after checking the body is exactly the style's documented shape."""
    assert isinstance(body, dict), body
    if style == "ours":
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}, body
        err = body["error"]
        assert all(isinstance(err[k], str) and err[k] for k in err), body
        return err["message"]
    if style == "vllm":  # vLLM's ErrorResponse (+ our request id)
        assert set(body) == {"error"}, body
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code", "request_id"}, body
        assert err["code"] == status and isinstance(err["type"], str) and err["param"] in (None, "model", "input")
        return err["message"]
    if style == "sglang":  # SGLang's OpenAI-style ErrorResponse (+ our request id)
        assert set(body) == {"object", "message", "type", "param", "code", "request_id"}, body
        assert body["object"] == "error" and body["code"] == status and isinstance(body["type"], str), body
        return body["message"]
    assert style == "tei", style  # TEI's ErrorResponse
    assert set(body) == {"error", "error_type"} and isinstance(body["error_type"], str), body
    assert isinstance(body["error"], str), body
    return body["error"]


@pytest.fixture(scope="module")
def fuzz_app(inproc, tmp_path_factory):
    """The Serve app's HTTP layer and config over the tiny models (`inproc`'s), plus a process reward
    model and a pointwise judge, so that every route has a model to answer it."""
    from helpers import app_args

    from cluster.core.config import AppConfig
    from cluster.engine.loading import local_service
    from cluster.http.app import create_app
    from cluster.tiny import build_tiny_model, build_tiny_prm

    extra = tmp_path_factory.mktemp("fuzz-prm")
    args = app_args(*inproc["paths"])
    args["models"] += [
        {
            "name": "prm",
            "path": str(build_tiny_prm(extra / "prm", style="qwen")),
            "kind": "prm",
            "trust_remote_code": True,
            "step_tag": "<extra_0>",
            "max_length": 512,
            "max_batch_tokens": 2048,
        },
        {
            "name": "rater",
            "path": str(build_tiny_model(extra / "rater", kind="pointwise")),
            "kind": "pointwise",
            "max_length": 1024,
            "max_batch_tokens": 2048,
            "max_new_tokens": 8,
        },
    ]
    config = AppConfig.parse(args)
    app = create_app(
        local_service(config),
        api_keys=config.api_keys,
        max_request_bytes=config.max_request_bytes,
        trusted_networks=config.trusted_networks,
    )
    models_dir = str(Path(inproc["paths"][0]).parent)
    repo = str(Path(cluster.__file__).resolve().parents[1])
    internal = [
        repo,
        models_dir,
        str(Path(models_dir).parent),
        str(extra),
        str(extra.parent),
        sys.prefix,
        sys.base_prefix,
        sysconfig.get_paths()["purelib"],
        "site-packages",
    ]
    return app, internal


@pytest.fixture
def fuzzer(fuzz_app, figures):
    f = Fuzzer(*fuzz_app)
    yield f
    figures(
        tried=sum(f.tried.values()),
        per_group=dict(sorted(f.tried.items())),
        statuses=dict(sorted(f.statuses.items())),
        five_xx=f.five_xx,
        tracebacks=f.tracebacks,
    )


# ----------------------------------------------------------------------------- strategies

SURROGATES = ["\ud800", "\udfff", "a\udc80b", "\ud83d"]  # lone halves of a UTF-16 pair
STRANGE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202e\u0635\u0644\u0627\u0645",
    "\U0001f600" * 50,
    "\ufeff",
    "\r\n\t",
    "<|begin_of_text|>",
    "<s></s>[CLS][SEP]",
    "{{ raise_exception('x') }}",
    "{% for %}",
    "%s%n%x",
    "null",
    "../../etc/passwd",
    "a" * 600,
    "tok " * 2000,
    *SURROGATES,
]
BIG_NUMBERS = [
    10**30,
    -(10**30),
    2**63,
    -(2**63) - 1,
    2**64,
    1e308,
    -1e308,
    5e-324,
    float("nan"),
    float("inf"),
    float("-inf"),
    Raw("9" * 4000),
    Raw("-" + "9" * 4000),
    Raw("1e999999"),
    Raw("1" + "0" * 5000),
    Raw("0." + "1" * 5000),
]
WRONG_TYPES = [None, True, False, 0, -1, 1, 1.5, "", "x", [], {}, [[]], [{}], {"": None}, [None], ["x"], [1]]
ROLES = ["bot", "", "USER", "tool", "function", "developer", "system ", "\ud800", "assistant\x00", "a" * 5000]
TOKEN_IDS = [
    [-1],
    [0, -5, 3],
    [10**12],
    [2**63],
    [2**32 + 5],
    [1, 2, 10**30],
    [True, False],
    [1.0, 2.0],
    [Raw("9" * 3000)],
    [511, 512],
    [0] * 10_000,
    list(range(-5, 5)),
]


def deep(depth: int, kind: str = "list") -> Raw:
    opener, closer = ("[", "]") if kind == "list" else ('{"a":', "}")
    return Raw(opener * depth + "1" + closer * depth)


def long_list(n: int, item) -> list:
    return [item] * n


HOSTILE = [
    *WRONG_TYPES,
    *BIG_NUMBERS,
    *STRANGE_TEXT,
    *TOKEN_IDS,
    deep(64),
    deep(600),
    deep(5000),
    deep(300, "dict"),
    deep(3000, "dict"),
    "x" * 50_000,
    "x" * 210_000,  # within and past the byte limit
    long_list(10_000, 1),
    long_list(10_000, "a"),
    long_list(10_000, None),
    long_list(65, "a"),
    long_list(65, CONV),
    long_list(65, ITEM),
    long_list(10_000, {}),
    long_list(3_000, CONV),
    [{"role": r, "content": "hi"} for r in ROLES[:4]],
    [{"role": "user"}],
    [{"content": "hi"}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}],
    [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    [{"role": "assistant", "content": "a"}] * 3,
    [[{"role": "user", "content": "q"}]],
    [["q", "a"]],
    [["q", "a", "b"]],
    [[]],
    [["", ""]],
]
CORE_HOSTILE = [
    None,
    True,
    -1,
    1.5,
    "",
    [],
    {},
    [None],
    10**30,
    float("nan"),
    float("inf"),
    Raw("9" * 4000),
    "\ud800",
    "a\udc80b",
    "a\x00b",
    "x" * 50_000,
    deep(600),
    [-1, 10**12],
    long_list(10_000, "a"),
]
EXTRA_KEYS = [
    "extra",
    "",
    "__proto__",
    "constructor",
    "\x00",
    "k" * 5_000,
    "\ud800",
    "model ",
    "conversations\x00",
    "items.0",
    "$ref",
]

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(STRANGE_TEXT)
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)


def field_dicts(names: list[str]):
    """Objects with the route's own field names (and others) mapped to arbitrary values."""
    keys = st.sampled_from(names) | st.text(max_size=12)
    return st.dictionaries(keys, json_values, max_size=6)


def locations(value, prefix=()):
    """Every place in a JSON value (lists: their first three elements)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from locations(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield from locations(v, (*prefix, i))


def get_at(value, where):
    for k in where:
        value = value[k]
    return value


def mutate(body, draw) -> object:
    """One mutation of a valid body at a drawn location: replaced by a hostile value, deleted,
    given an extra key, or its list grown / emptied."""
    where = draw(st.sampled_from(list(locations(body))))
    op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "extra_key", "grow"]))
    if op == "replace":
        value = copy.deepcopy(draw(st.sampled_from(HOSTILE) | json_values))  # HOSTILE's own values stay as they are
        if not where:
            return value
        get_at(body, where[:-1])[where[-1]] = value
    elif op == "delete" and where:
        parent = get_at(body, where[:-1])
        del parent[where[-1]]
    elif op == "extra_key":
        target = get_at(body, where)
        if not isinstance(target, dict):
            target = body if isinstance(body, dict) else None
        if target is not None:
            target[draw(st.sampled_from(EXTRA_KEYS) | st.text(max_size=10))] = draw(json_values)
    elif op == "grow":
        target = get_at(body, where)
        if isinstance(target, list):
            n = draw(st.sampled_from([0, 2, 64, 65, 10_000]))
            target[:] = (target * (n // max(1, len(target)) + 1))[:n] if target else [None] * min(n, 100)
    return body


@st.composite
def near_valid(draw):
    route = draw(st.sampled_from(POST_ROUTES))
    body = copy.deepcopy(draw(st.sampled_from(ROUTES[route])))
    for _ in range(draw(st.integers(1, 3))):
        body = mutate(body, draw)
    return route, body


CONTENT_TYPES = [
    None,
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/json; charset=latin-1",
    "application/xml",
    "application/octet-stream",
    "garbage",
    "application/json; charset=utf-16",
    "",
]


@st.composite
def raw_bodies(draw):
    """Bytes that are not JSON, or not UTF-8, or JSON cut short or wrapped, with any content type."""
    route = draw(st.sampled_from(POST_ROUTES))
    valid = dumps(draw(st.sampled_from(ROUTES[route])))
    kind = draw(
        st.sampled_from(["binary", "truncated", "bad_utf8", "bom", "utf16", "form", "wrapped", "empty", "text"])
    )
    if kind == "binary":
        content = draw(st.binary(max_size=400))
    elif kind == "truncated":
        content = valid[: draw(st.integers(0, max(0, len(valid) - 1)))]
    elif kind == "bad_utf8":
        at = draw(st.integers(0, len(valid)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"]))
        content = valid[:at] + junk + valid[at:]
    elif kind == "bom":
        content = b"\xef\xbb\xbf" + valid
    elif kind == "utf16":
        content = valid.decode().encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"])))
    elif kind == "form":
        content = b"conversations=hi&input=x&query=y"
    elif kind == "wrapped":
        content = draw(
            st.sampled_from(
                [
                    b"[" + valid + b"]",
                    b'{"body": ' + valid + b"}",
                    valid + valid,
                    valid + b"garbage",
                    b"  \n" + valid + b"\n\x00",
                ]
            )
        )
    elif kind == "empty":
        content = draw(st.sampled_from([b"", b" ", b"null", b"{}", b"[]", b'""', b"0", b"NaN"]))
    else:
        content = draw(st.text(max_size=200)).encode("utf-8", errors="surrogatepass")
    headers = {}
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    if ctype is not None:
        headers["content-type"] = ctype
    return route, content, headers


# ----------------------------------------------------------------------------- tests


def test_every_served_route_is_fuzzed(fuzz_app):
    """The route table here is every route the app serves (and nothing else): a new route must come
    with its valid bodies to be fuzzed."""
    app, _ = fuzz_app
    assert served_routes(app) - DOC_ROUTES == set(ROUTES) - DOC_ROUTES


def test_valid_bodies_answer_200(fuzzer, fuzz_app):
    """The seeds the mutations start from are valid: every one answers 2xx (the documentation
    routes where the app serves them)."""
    served = served_routes(fuzz_app[0])
    requests = [
        Request(m, p, None if b is None else dumps(b))
        for (m, p), bodies in ROUTES.items()
        for b in bodies
        if (m, p) in served
    ]
    for req, resp in zip(requests, fuzzer.send(*requests)):
        assert 200 <= resp.status_code < 300, f"{req!r}: {resp.status_code} {resp.text[:500]}"


def test_arbitrary_json_on_every_route(fuzzer):
    """Any JSON value (NaN and Infinity literals, huge integers, odd text) as the body of any route
    and method, valid key."""

    @fuzz_settings(500)
    @given(st.data())
    def run(data):
        method, path = data.draw(st.sampled_from(sorted(ROUTES)))
        names = sorted({k for b in ROUTES[(method, path)] if b for k in b})
        body = data.draw(json_values | field_dicts(names or ["x"]))
        fuzzer.send(Request(method, path, dumps(body)))

    run()


def test_near_valid_bodies(fuzzer):
    """A valid body per route with one to three fields mutated: wrong types, huge numbers,
    NaN / Infinity, deep nesting, long strings, lone surrogates and NULs, empty and 10k-item lists,
    extra and missing keys, token ids out of range, wrong roles."""

    @fuzz_settings(700)
    @given(near_valid())
    def run(case):
        (method, path), body = case
        fuzzer.send(Request(method, path, dumps(body)))

    run()


def test_every_hostile_value_in_every_field(fuzzer):
    """Not left to chance: each of the core hostile values (and a share of the others) in each
    top-level field any of a route's valid bodies has, put in its first valid body (and as the whole
    body)."""
    requests = []
    for method, path in POST_ROUTES:
        seed = ROUTES[(method, path)][0]
        fields = sorted({k for body in ROUTES[(method, path)] for k in body} | {"model"})  # every route takes one
        for value in CORE_HOSTILE + HOSTILE[1::7]:
            requests.append(Request(method, path, dumps(value)))
            for field in fields:
                requests.append(Request(method, path, dumps({**seed, field: value})))
        for key in EXTRA_KEYS:
            requests.append(Request(method, path, dumps({**seed, key: 1})))
        for field in seed:
            requests.append(Request(method, path, dumps({k: v for k, v in seed.items() if k != field})))
    for i in range(0, len(requests), 50):
        fuzzer.send(*requests[i : i + 50])


def test_every_role_and_text_in_every_message_form(fuzzer):
    """Odd roles and texts in each place a message or a text is taken (our conversations, vLLM's
    chat form, SGLang's text pairs, TEI's pairs, OpenRLHF's queries, judge items), on each model."""
    requests = []
    for model in ("rm", "rm-gemma", "rm-attrs", "rm-bert", "rm-mix"):
        for role in ROLES:
            conv = [{"role": role, "content": "hi"}, {"role": "assistant", "content": "a"}]
            requests += [
                Request("POST", "/v1/rewards", dumps({"model": model, "conversations": [conv]})),
                Request("POST", "/classify", dumps({"model": model, "messages": conv})),
                Request("POST", "/pooling", dumps({"model": model, "messages": conv[::-1]})),
            ]
            if model != "rm-mix":
                requests.append(Request("POST", "/tokenize", dumps({"model": model, "messages": conv})))
        for text in STRANGE_TEXT:
            requests += [
                Request(
                    "POST",
                    "/v1/rewards",
                    dumps(
                        {
                            "model": model,
                            "conversations": [
                                [{"role": "user", "content": text}, {"role": "assistant", "content": text}],
                                text,
                            ],
                        }
                    ),
                ),
                Request("POST", "/classify", dumps({"model": model, "text": [[text, text]]})),
                Request("POST", "/classify", dumps({"model": model, "input": text, "add_special_tokens": False})),
                Request("POST", "/classify", dumps({"model": model, "input": text, "truncate_prompt_tokens": 1})),
                Request("POST", "/predict", dumps({"model": model, "inputs": [text, text]})),
                Request("POST", "/get_reward", dumps({"model": model, "query": [text]})),
                Request("POST", "/score", dumps({"model": model, "text_1": text, "text_2": [text]})),
                Request(
                    "POST",
                    "/v1/compare",
                    dumps({"model": model, "prompt": text, "response_a": text, "response_b": "b"}),
                ),
            ]
    for text in STRANGE_TEXT:
        requests.append(
            Request(
                "POST",
                "/v1/judge",
                dumps({"items": [{"prompt": text, "response_a": text, "response_b": "b"}], "debias": True}),
            )
        )
    for i in range(0, len(requests), 50):
        fuzzer.send(*requests[i : i + 50])


def test_raw_bytes_content_types_and_bad_utf8(fuzzer):
    """Bodies that are not JSON, not UTF-8, cut short or wrapped, under any content type."""

    @fuzz_settings(350)
    @given(raw_bodies())
    def run(case):
        (method, path), content, headers = case
        fuzzer.send(Request(method, path, content, headers))

    run()


URL_CHARS = dict(codec="utf-8", exclude_categories=("Cc", "Cs"))  # what a URL can carry (httpx refuses the rest)
segment = st.text(alphabet=st.characters(**URL_CHARS, exclude_characters="/?#"), max_size=20)
query_part = st.text(alphabet=st.characters(**URL_CHARS, exclude_characters="#&="), max_size=30)


@st.composite
def odd_requests(draw):
    """Wrong methods on every path, unknown paths, query strings (with and without bodies)."""
    kind = draw(st.sampled_from(["method", "unknown", "query", "variant"]))
    method, path = draw(st.sampled_from(sorted(ROUTES)))
    if kind == "method":
        method = draw(st.sampled_from([m for m in METHODS if m != method]))
    elif kind == "unknown":
        path = "/" + "/".join(draw(st.lists(segment, min_size=1, max_size=4)))
        method = draw(st.sampled_from(METHODS))
    elif kind == "variant":
        path = draw(
            st.sampled_from(
                [
                    path + "/",
                    path.upper(),
                    "/" + path,
                    path + "/x",
                    path + "%00",
                    path.replace("/", "//"),
                    path + "/..",
                    path + ";x",
                    "/" + "a" * 3000,
                ]
            )
        )
    queries = draw(st.lists(st.tuples(query_part, query_part), max_size=4))
    query = "&".join(f"{k}={v}" for k, v in queries)
    if draw(st.booleans()):
        query += draw(
            st.sampled_from(
                [
                    "",
                    "&%ff=%fe",
                    "&api_key=",
                    "&api_key=wrong",
                    "&a=%zz",
                    "&&&=&",
                    "&model=rm&model=judge",
                    "&x=" + "y" * 3000,
                ]
            )
        )
    body = ROUTES.get((method, path), [None])[0] if draw(st.booleans()) else draw(json_values)
    content = None if body is None and method in ("GET", "HEAD") else dumps(body)
    return Request(method, path, content, query=query)


def test_wrong_methods_unknown_paths_and_query_strings(fuzzer):
    @fuzz_settings(350)
    @given(odd_requests())
    def run(req):
        fuzzer.send(req)

    run()


AUTH = [
    "",
    "Bearer",
    "Bearer ",
    "Bearer wrong-key",
    f"Bearer {API_KEY}x",
    f"bearer  {API_KEY[:-1]}",
    "Basic",
    "Basic !!!notbase64",
    "Basic " + base64.b64encode(b"no-colon").decode(),
    "Basic " + base64.b64encode(b"user:wrong").decode(),
    "Token " + API_KEY,
    API_KEY,
    "Bearer " + "k" * 5000,
    "Bearer \x7f\x01",
]


@st.composite
def unauthorized(draw):
    method, path = draw(st.sampled_from(sorted(ROUTES)))
    body = draw(st.sampled_from(ROUTES[(method, path)]))
    key = draw(st.sampled_from([None, *AUTH]))
    query = draw(st.sampled_from(["", "api_key=wrong", "api_key=", f"api_key={API_KEY}x", "api_key=%ff"]))
    headers = {"x-forwarded-for": "127.0.0.2"} if draw(st.booleans()) else {}
    return Request(method, path, None if body is None else dumps(body), headers, key=key, query=query)


def test_missing_and_wrong_keys(fuzzer):
    """Without a valid key every route but the health checks answers 401, in its own error shape,
    whatever the body; with the key in the query string or as a Basic password, as with the header."""

    @fuzz_settings(250)
    @given(unauthorized())
    def run(req):
        fuzzer.send(req)

    run()
    served = served_routes(fuzzer.app)
    keyed = [
        Request(m, p, None if b is None else dumps(b), key=k)
        for (m, p), bodies in ROUTES.items()
        for b in bodies[:1]
        for k in ("query", "basic")
        if (m, p) in served
    ]
    for req, resp in zip(keyed, fuzzer.send(*keyed)):
        assert 200 <= resp.status_code < 300, f"{req!r}: {resp.status_code} {resp.text[:300]}"
    # `/route/` is redirected to `/route`; a key given in the query string is not in the redirect
    slashed = [
        Request(m, p + "/", None if b is None else dumps(b), key="query")
        for (m, p), bodies in ROUTES.items()
        for b in bodies[:1]
        if (m, p) in served
    ]
    for req, resp in zip(slashed, fuzzer.send(*slashed)):
        assert resp.status_code == 307, f"{req!r}: {resp.status_code} {resp.text[:300]}"


def test_lying_headers_and_oversized_bodies(fuzzer):
    """Content-Length that lies or is not a number, request ids of every size, bodies past the limit."""
    seed = dumps(ROUTES[("POST", "/v1/rewards")][0])
    requests = []
    for method, path in POST_ROUTES:
        requests += [
            Request(method, path, b"x" * (MAX_REQUEST_BYTES + 1)),
            Request(method, path, b'{"a": "' + b"x" * MAX_REQUEST_BYTES + b'"}'),
            Request(method, path, seed, {"x-request-id": "r" * 3}),
            Request(method, path, seed, {"x-request-id": b"\x00\xff\x7f" * 10}),
            Request(method, path, b"{", {"x-request-id": "id-" + "9" * 100}),
            Request(method, path, seed, {"content-encoding": "gzip"}),
            Request(method, path, seed, {"transfer-encoding": "chunked"}),
            Request(method, path, seed, {"expect": "100-continue"}),
        ]
    fuzzer.send(*requests)
    for length in ("abc", "-1", "99999999999999999999", str(MAX_REQUEST_BYTES + 1), "0", "1e3", " 12"):
        for method, path in POST_ROUTES[::3]:
            resp = asyncio.run(_raw_asgi(fuzzer.app, method, path, [seed], {b"content-length": length.encode()}))
            fuzzer.check(Request(method, path, seed, {"content-length": length}), resp)
    for method, path in POST_ROUTES:  # a body in chunks, and a client that goes away mid-body
        resp = asyncio.run(_raw_asgi(fuzzer.app, method, path, [seed[:5], seed[5:]], {}))
        fuzzer.check(Request(method, path, seed), resp)
        resp = asyncio.run(_raw_asgi(fuzzer.app, method, path, [seed[:5]], {}, disconnect=True))
        fuzzer.check(Request(method, path, seed[:5]), resp)


async def _raw_asgi(
    app, method: str, path: str, chunks: list[bytes], headers: dict[bytes, bytes], disconnect: bool = False
) -> httpx.Response:
    """One request straight through ASGI: headers as given (a lying Content-Length), the body in
    chunks, or the client gone after the first."""
    sent = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1 or disconnect}
        for i, c in enumerate(chunks)
    ] + ([{"type": "http.disconnect"}] if disconnect else [])
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"in-process"),
            (b"authorization", f"Bearer {API_KEY}".encode()),
            (b"content-type", b"application/json"),
            *headers.items(),
        ],
        "client": ("127.0.0.1", 5555),
        "server": ("in-process", 80),
    }
    status, body = 0, []
    response_headers: list = []

    async def receive():
        if sent:
            return sent.pop(0)
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status, response_headers
        if message["type"] == "http.response.start":
            status, response_headers = message["status"], message.get("headers", [])
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    return httpx.Response(
        status,
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response_headers],
        content=b"".join(body),
    )


# ----------------------------------------------------------------------------- the checker itself


class FaultyEncoder:
    """An encoder that fails as a bug would, with a path and a traceback-like text in its error."""

    def __init__(self, encoder):
        self.encoder = encoder

    def encode(self, parts):
        raise RuntimeError('boom in /work/cluster/engine/encoders.py: File "x.py", line 1')


def test_an_unexpected_exception_fails_the_fuzzer(fuzz_app, inproc):
    """The checks above would catch a route that raises: over a service whose encoder raises, a
    valid body answers 500 (with no traceback) and the fuzzer's check fails on it."""
    from dataclasses import replace

    from cluster.http.app import create_app

    service = inproc["service"]
    broken = replace(service, encoder=FaultyEncoder(service.encoder))
    app = create_app(broken, api_keys=[API_KEY], max_request_bytes=MAX_REQUEST_BYTES)
    fuzzer = Fuzzer(app, fuzz_app[1])
    for method, path in [
        ("POST", "/v1/rewards"),
        ("POST", "/classify"),
        ("POST", "/v1/embeddings"),
        ("POST", "/predict"),
    ]:
        with pytest.raises(AssertionError, match="^500 for"):
            fuzzer.send(Request(method, path, dumps(ROUTES[(method, path)][0])))
    assert fuzzer.five_xx == 4 and fuzzer.tracebacks == 0
