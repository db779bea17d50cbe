"""Auth that cannot fail open, docs routes off, and request bodies bounded in size and time while
they are read (chunked ones too): the HTTP app in-process, no Ray (cluster/http/app.py: Guard;
cluster/core/config.py: api_key_digests)."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import pytest
from helpers import API_KEY, InProcessClient

from cluster.core.config import AppConfig, ConfigError, api_key_digests
from cluster.http.app import create_app, route_path

MODEL = {"name": "rm", "path": "/models/rm", "kind": "reward"}
DIGEST = "sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()


def digests(environ=None, **config) -> list[str]:
    return api_key_digests(AppConfig(models=[MODEL], **config), environ or {})


# ---------------------------------------------------------------- keys


def test_empty_keys_are_refused_wherever_they_come_from(tmp_path):
    for keys in ([""], ["   "]):
        with pytest.raises(ConfigError, match="api_keys"):
            AppConfig(models=[MODEL], api_keys=keys)
    with pytest.raises(ConfigError, match="SCORING_API_KEYS is set but holds no key"):
        digests({"SCORING_API_KEYS": " , "})
    empty = tmp_path / "keys"
    empty.write_text("# no keys yet\n\n")
    with pytest.raises(ConfigError, match="holds no key; an empty key file would leave the app open"):
        digests(api_keys_file=str(empty))
    with pytest.raises(ConfigError, match="cannot read the API key file .*must exist where the ingress runs"):
        digests({"SCORING_API_KEYS_FILE": str(tmp_path / "missing")})


def test_keys_from_the_config_a_file_and_the_nodes_environment_all_count_as_digests(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text(f"# scoring keys\nfile-key\n{DIGEST.upper().replace('SHA256:', 'sha256:')}\n")
    got = digests({"SCORING_API_KEYS": "env-a, env-b"}, api_keys=["inline"], api_keys_file=str(keyfile))
    expect = ["sha256:" + hashlib.sha256(k.encode()).hexdigest() for k in ("inline", "file-key")] + [DIGEST]
    expect += ["sha256:" + hashlib.sha256(k.encode()).hexdigest() for k in ("env-a", "env-b")]
    assert got == expect
    assert digests() == []  # no source: an open app (and a warning, below)


def test_the_ingress_is_bound_to_digests_never_to_keys(tmp_path):
    """Serve stores a deployment's arguments: they hold no key."""
    from deployments import app as app_module

    bound = {}

    class Recorder:
        def __init__(self, *a, **kw):
            pass

        def bind(self, *args):
            bound["args"] = args  # the ingress is bound last
            return self

        def options(self, **kw):
            return self

    fake_serve = type("S", (), {"deployment": staticmethod(lambda *a, **kw: Recorder())})
    original = app_module.serve
    app_module.serve = fake_serve
    try:
        app_module.build_app({"models": [MODEL], "api_keys": ["plain-secret"]})
    finally:
        app_module.serve = original
    config = bound["args"][0]
    assert "plain-secret" not in repr(bound["args"])
    assert config["api_keys"] == ["sha256:" + hashlib.sha256(b"plain-secret").hexdigest()]


def test_an_open_app_says_so_loudly_when_reachable_from_elsewhere(caplog):
    from cluster.http.app import warn_if_open

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        warn_if_open("127.0.0.1")
        warn_if_open("localhost")
        assert not caplog.records
        warn_if_open("0.0.0.0")
    assert "NO API KEY IS SET and Serve listens on 0.0.0.0" in caplog.text


def test_an_open_app_warns_at_its_first_request_from_another_machine(inproc, caplog):
    import httpx

    app = create_app(inproc["service"])

    async def send(client_address):
        transport = httpx.ASGITransport(app=app, client=(client_address, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            return await c.get("/healthz")

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        asyncio.run(send("127.0.0.1"))
        assert "NO API KEY" not in caplog.text
        asyncio.run(send("10.1.2.3"))
        asyncio.run(send("10.1.2.4"))
    assert caplog.text.count("NO API KEY IS SET and a request came from 10.1.2.3") == 1


# ---------------------------------------------------------------- docs routes


def test_docs_routes_are_off_by_default_and_behind_the_key_when_on(inproc):
    default = InProcessClient(create_app(inproc["service"], api_keys=[API_KEY]), {"Authorization": f"Bearer {API_KEY}"})
    for path in ("/docs", "/redoc", "/openapi.json"):
        r = default.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    on = create_app(inproc["service"], api_keys=[API_KEY], docs=True)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert InProcessClient(on).get(path).status_code == 401, path
        assert InProcessClient(on, {"Authorization": f"Bearer {API_KEY}"}).get(path).status_code == 200, path


# ---------------------------------------------------------------- bodies bounded while read


async def call_app(app, receive, path="/v1/rewards", headers=()):
    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {API_KEY}".encode()), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("x", 80),
        "scheme": "http",
        "http_version": "1.1",
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def test_a_chunked_body_is_cut_off_at_the_limit_not_read_in_full(inproc):
    """Seen before: a chunked 300 MB body was read into memory in full before the 413."""
    import json

    app = create_app(inproc["service"], api_keys=[API_KEY], max_request_bytes=100_000)
    read = 0

    async def endless():  # 1 MB chunks, no Content-Length, never ending
        nonlocal read
        read += 1
        return {"type": "http.request", "body": b"x" * (1 << 20), "more_body": True}

    status, body = asyncio.run(call_app(app, endless))
    assert status == 413 and read == 1
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and "max_request_bytes" in error["message"]


def test_a_stalled_body_is_answered_408_and_frees_its_slot(inproc):
    """Seen before: slow bodies had no read timeout and filled the ingress's slots."""
    import json

    app = create_app(inproc["service"], api_keys=[API_KEY], body_timeout_s=0.3)
    parts = iter([b'{"conversations": ['])

    async def trickle():
        part = next(parts, None)
        if part is None:
            await asyncio.sleep(3600)  # the client stops sending
        return {"type": "http.request", "body": part, "more_body": True}

    async def run():
        return await asyncio.wait_for(call_app(app, trickle), timeout=5)

    status, body = asyncio.run(run())
    error = json.loads(body)["error"]
    assert status == 408 and error["code"] == "request_timeout"
    assert "within 0.3s (body_timeout_s); 19 bytes came" in error["message"]


def test_routes_and_open_paths_are_found_under_a_route_prefix(inproc):
    """Serve's route_prefix puts a root_path in front of every path: auth's open paths and the
    error styles must see the route's own path."""
    assert route_path({"path": "/scoring/healthz", "root_path": "/scoring"}) == "/healthz"
    assert route_path({"path": "/scoring", "root_path": "/scoring"}) == "/"
    assert route_path({"path": "/healthz", "root_path": ""}) == "/healthz"
    app = create_app(inproc["service"], api_keys=[API_KEY])
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/scoring/healthz",
        "raw_path": b"/scoring/healthz",
        "root_path": "/scoring",
        "query_string": b"",
        "headers": [],
        "client": ("10.0.0.1", 1),
        "server": ("x", 80),
        "scheme": "http",
        "http_version": "1.1",
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200  # open without a key, as /healthz is at the root


# ---------------------------------------------------------------- one error shape, nothing echoed at length


def test_unparseable_bodies_and_odd_ids_get_our_error_shape_briefly(inproc):
    client = inproc["client"]
    for raw in (b'{"conversations": ["\xff"]}', b"[" * 5000 + b"]" * 5000, b'{"n": ' + b"9" * 5000 + b"}"):
        r = client.post("/v1/rewards", content=raw)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input", r.text[:200]
        assert r.json()["error"]["message"].startswith("body: Invalid JSON")
    r = client.post("/v1/rewards", content=b"{", headers={"x-request-id": "id-" + "9" * 20_000})
    assert r.status_code == 422 and len(r.text) < 1000 and len(r.json()["error"]["request_id"]) <= 128
    r = client.post("/v1/rewards", content=b'{"model": "\\ud800x", "conversations": ["hi"]}')
    assert 400 <= r.status_code < 500 and r.json()["error"]["message"], r.text[:300]


# ---------------------------------------------------------------- HTTP conformance


def test_a_wrong_method_is_405_with_allow_naming_every_method_the_path_takes(inproc):
    client = inproc["client"]
    for method, path, allowed in (
        ("DELETE", "/classify", "POST, PUT"),  # SGLang's native /classify takes PUT too
        ("DELETE", "/v1/rewards", "POST"),
        ("POST", "/v1/models", "GET"),
        ("PATCH", "/healthz", "GET"),
    ):
        r = client.request(method, path, json={})
        assert r.status_code == 405, (method, path, r.text)
        assert r.headers["allow"] == allowed, (method, path, r.headers)
        error = r.json()["error"]  # in the path's protocol's shape: ours, or vLLM's (code 405)
        assert error["code"] in ("method_not_allowed", 405) and allowed in error["message"], error


def test_a_body_that_is_not_json_by_its_type_or_is_compressed_is_415(inproc):
    import gzip
    import json

    client = inproc["client"]
    body = json.dumps({"conversations": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]})
    for content_type in ("text/plain", "image/png", "multipart/form-data; boundary=x", "application/xml"):
        r = client.post("/v1/rewards", content=body, headers={"content-type": content_type})
        assert r.status_code == 415, (content_type, r.text)
        assert r.json()["error"]["code"] == "unsupported_media_type" and "application/json" in r.text
    r = client.post("/v1/rewards", content=gzip.compress(body.encode()), headers={"content-encoding": "gzip"})
    assert r.status_code == 415 and "uncompressed" in r.json()["error"]["message"], r.text
    # JSON by every name a client gives it (curl's -d default included), and no type at all
    for content_type in (
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "application/x-www-form-urlencoded",
        None,
    ):
        headers = {"content-type": content_type} if content_type else {}
        r = client.post("/v1/rewards", content=body, headers=headers)
        assert r.status_code == 200, (content_type, r.text)
    # a protocol's own error shape: vLLM's routes answer 415 as vLLM errors
    r = client.post("/classify", content="{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == 415, r.text


def test_headers_over_the_limit_are_431(inproc):
    from cluster.http.app import MAX_HEADER_BYTES

    r = inproc["client"].get("/v1/models", headers={"x-big": "a" * MAX_HEADER_BYTES})
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large", r.text
    assert inproc["client"].get("/v1/models", headers={"x-fine": "a" * 8000}).status_code == 200


def test_a_websocket_handshake_is_refused_and_its_key_never_logged(inproc, caplog):
    """A WebSocket upgrade to any route, with the key in its URL, through a real server (uvicorn)
    and a real WebSocket client: 403, and no log line of the server's holds the key."""
    import websockets.sync.client
    from helpers import LiveServer
    from websockets.exceptions import InvalidStatus

    server = LiveServer(create_app(inproc["service"], api_keys=[API_KEY]), log_level="info", access_log=True)
    try:
        with caplog.at_level(logging.INFO):  # the level servers log at (a DEBUG wire trace shows any URL)
            for path in ("/v1/rewards", "/healthz", "/nothing"):
                with pytest.raises(InvalidStatus) as refused:
                    websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}{path}?api_key={API_KEY}&x=1")
                assert refused.value.response.status_code == 403
        # what the server logged (the client's own debug lines show the URL it sent)
        served = [r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client")]
        assert any("WebSocket" in line and "403" in line for line in served), served
        assert not any(API_KEY in line for line in served), served
    finally:
        server.stop()
