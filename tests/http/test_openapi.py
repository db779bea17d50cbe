"""/openapi.json (create_app(..., docs=True)) states what the app answers: every route's error statuses
in its protocol's error body, the security schemes, the constraints the code enforces, and the
answers each route gives; and the app refuses what the document forbids (strict JSON types: a bool
is not a token id, 0 is not false). The whole document against the app, every check of schemathesis,
is tests/reliability/test_reliability_openapi.py; these are its fast, pointed cases."""

from __future__ import annotations

import base64

import pytest
from helpers import API_KEY, CONVERSATIONS, InProcessClient

from cluster.http import schemas, sglang, tei, vllm

KEY = {"Authorization": f"Bearer {API_KEY}"}
MAX_ITEMS = 64  # helpers.app_args' max_items_per_request
OURS = ["/v1/rewards", "/v1/compare", "/v1/judge", "/v1/step_rewards", "/v1/rate", "/get_reward", "/slime/reward"]
VLLM = ["/classify", "/pooling", "/score", "/rerank", "/tokenize", "/generative_scoring"]
SGLANG = ["/v1/embeddings", "/v1/classify"]
ERROR_MODEL = {
    **dict.fromkeys(OURS + ["/healthz", "/v1/models"], schemas.ErrorResponse),
    **dict.fromkeys(VLLM + ["/health", "/version", "/v1/chat/completions"], vllm.VLLMErrorResponse),
    **dict.fromkeys(SGLANG, sglang.SGLangErrorResponse),
    "/predict": tei.TEIErrorResponse,
}
OPEN = {"/healthz", "/health"}
# each protocol's status for invalid input and for a full queue
INVALID_AND_OVERLOADED = {
    schemas.ErrorResponse: ("422", "503"),
    vllm.VLLMErrorResponse: ("400", "503"),
    sglang.SGLangErrorResponse: ("400", "503"),
    tei.TEIErrorResponse: ("422", "429"),
}


@pytest.fixture(scope="module")
def documented(inproc):
    from cluster.http.app import create_app

    app = create_app(inproc["service"], api_keys=[API_KEY], max_request_bytes=200_000, docs=True)
    client = InProcessClient(app, KEY)
    return {"app": app, "client": client, "spec": client.get("/openapi.json").json()}


def operations(spec):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_every_route_documents_its_errors_in_its_protocols_body(documented):
    spec = documented["spec"]
    assert {p for p, _, _ in operations(spec)} == set(ERROR_MODEL)
    assert "HTTPValidationError" not in str(spec)  # FastAPI's {"detail"} 422: no route answers it
    for path, method, op in operations(spec):
        errors = {s: r for s, r in op["responses"].items() if int(s) >= 400}
        refs = {r["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1] for r in errors.values()}
        assert refs == {ERROR_MODEL[path].__name__}, (path, refs)
        assert {"408", "413", "431", "500"} <= set(errors), path  # Guard: any request
        assert ("401" in errors) == (path not in OPEN), path
        assert "200" in op["responses"], path
        if method in ("post", "put"):
            assert "$ref" in str(op["responses"]["200"]), path  # every answer has its schema
            assert {"404", "415"} <= set(errors), path
            invalid, overloaded = INVALID_AND_OVERLOADED[ERROR_MODEL[path]]
            assert invalid in errors and overloaded in errors, path
            assert invalid == "422" or "422" not in errors, path  # vLLM's and SGLang's invalid input is a 400
            assert errors[overloaded]["headers"]["Retry-After"]["required"] is True, path
        if "401" in errors:
            assert errors["401"]["headers"]["WWW-Authenticate"]["required"] is True, path
    for name, model in {m.__name__: m for m in ERROR_MODEL.values()}.items():
        assert spec["components"]["schemas"][name]["title"] == model.__name__


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/rewards", {"conversations": []}, 422),
        ("/v1/rewards", {"model": "nope", "conversations": ["x"]}, 404),
        ("/classify", {"input": ""}, 400),
        ("/classify", {"model": "nope", "input": "x"}, 404),
        ("/v1/embeddings", {"input": []}, 400),
        ("/predict", {"inputs": ""}, 422),
        ("/predict", {"model": "nope", "inputs": "x"}, 404),
        ("/generative_scoring", {"query": "q", "items": ["a"], "label_token_ids": []}, 400),
        ("/generative_scoring", {"model": "rm", "query": "q", "items": ["a"], "label_token_ids": [1]}, 400),
        ("/slime/reward", {"prompt": [], "response": "a"}, 422),
    ],
)
def test_the_documented_error_body_is_the_one_answered(documented, path, body, status):
    r = documented["client"].post(path, json=body)
    assert r.status_code == status, r.text
    assert str(status) in documented["spec"]["paths"][path]["post"]["responses"]
    ERROR_MODEL[path].model_validate(r.json())
    anonymous = InProcessClient(documented["app"]).post(path, json=body)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    ERROR_MODEL[path].model_validate(anonymous.json())
    form = documented["client"].post(path, content=b"x=1", headers={"content-type": "text/plain"})
    assert form.status_code == 415, form.text
    ERROR_MODEL[path].model_validate(form.json())


def test_security_schemes_are_the_ways_a_key_is_taken(documented):
    spec = documented["spec"]
    schemes = spec["components"]["securitySchemes"]
    assert (schemes["bearer"]["type"], schemes["bearer"]["scheme"]) == ("http", "bearer")
    assert (schemes["basic"]["type"], schemes["basic"]["scheme"]) == ("http", "basic")
    query = schemes["api_key"]
    assert (query["type"], query["in"], query["name"]) == ("apiKey", "query", "api_key")
    for path, _, op in operations(spec):
        assert op.get("security") == (None if path in OPEN else [{"bearer": []}, {"basic": []}, {"api_key": []}]), path
    anonymous = InProcessClient(documented["app"])
    basic = base64.b64encode(f"anyone:{API_KEY}".encode()).decode()
    assert anonymous.get("/v1/models").status_code == 401
    assert anonymous.get("/v1/models", headers=KEY).status_code == 200
    assert anonymous.get("/v1/models", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert anonymous.get(f"/v1/models?api_key={API_KEY}").status_code == 200


def test_the_item_limit_is_each_counted_lists_max_items(documented):
    components = documented["spec"]["components"]["schemas"]
    assert components["RewardsRequest"]["properties"]["conversations"]["maxItems"] == MAX_ITEMS
    assert components["JudgeRequest"]["properties"]["items"]["maxItems"] == MAX_ITEMS
    # a reward model compares a pair by two conversations, each counted
    assert components["CompareRequest"]["properties"]["items"]["anyOf"][0]["maxItems"] == MAX_ITEMS // 2
    assert "x-counted-items" not in str(components)
    c = documented["client"]
    pair = {"prompt": "q", "response_a": "a", "response_b": "b"}
    assert c.post("/v1/compare", json={"items": [pair] * (MAX_ITEMS // 2)}).status_code == 200
    assert c.post("/v1/compare", json={"items": [pair] * (MAX_ITEMS // 2 + 1)}).status_code == 413
    over = c.post("/score", json={"text_1": "q", "text_2": "a", "documents": ["d"] * (MAX_ITEMS + 1)})
    assert over.status_code == 413  # every list counts, the pair read or another


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"input": [[False]]}),  # a bool is not token id 0
        ("/v1/embeddings", {"input": [True, 2]}),
        ("/classify", {"input_ids": [1, "2"]}),  # nor is a string
        ("/classify", {"input": "x", "use_activation": 0.0}),  # 0 is not false
        ("/classify", {"text": "x", "truncate_prompt_tokens": 0}),  # -1 or at least 1, SGLang's form too
        ("/classify", {"text": "x", "input": "y"}),  # one form, not fields of two
        ("/pooling", {"input": "x", "text": "y"}),  # SGLang's fields are /classify's
        ("/tokenize", {"prompt": "x", "return_token_strs": True}),
        ("/v1/judge", {"items": [{"prompt": "q", "response_a": "a", "response_b": "b"}], "debias": 0}),
        ("/predict", {"inputs": "x", "raw_scores": 1}),
        ("/score", {"text_1": "q", "text_2": "a", "data_1": []}),
        ("/generative_scoring", {"query": "q", "items": ["a"], "label_token_ids": [True]}),
        ("/generative_scoring", {"query": "q", "items": ["a"], "label_token_ids": [-1]}),
        ("/generative_scoring", {"query": "q", "items": ["a", [1]], "label_token_ids": [1]}),
        ("/slime/reward", {"prompt": "q", "response": 5}),
    ],
)
def test_what_the_document_forbids_is_refused(documented, path, body):
    r = documented["client"].post(path, json=body)
    assert r.status_code in (400, 422), r.text


def test_json_integers_are_token_ids(documented):
    """An integer as JSON Schema has it: 5.0 is 5 (what vLLM's pydantic takes too)."""
    c = documented["client"]
    floats = c.post("/v1/embeddings", json={"input": [1.0, 2.0, 3.0]})
    ints = c.post("/v1/embeddings", json={"input": [1, 2, 3]})
    assert floats.status_code == ints.status_code == 200
    assert floats.json()["data"] == ints.json()["data"]


def test_sglang_native_classify_answers_its_documented_shape(documented):
    spec = documented["spec"]
    documented_shapes = str(spec["paths"]["/classify"]["post"]["responses"]["200"])
    assert "NativeClassification" in documented_shapes and "ClassificationResponse" in documented_shapes
    assert "put" in spec["paths"]["/classify"]  # SGLang's clients PUT it too
    c = documented["client"]
    one = c.post("/classify", json={"text": "hello"})
    assert one.status_code == 200, one.text
    sglang.NativeClassification.model_validate(one.json())
    pairs = c.request("PUT", "/classify", json={"text": [["q", "a"], ["q", "b"]], "rid": ["r1", "r2"]})
    assert pairs.status_code == 200, pairs.text
    assert [sglang.NativeClassification.model_validate(x).meta_info.id for x in pairs.json()] == ["r1", "r2"]
    vllm.ClassificationResponse.model_validate(c.post("/classify", json={"messages": CONVERSATIONS[0]}).json())
