"""`create_app(service)`: the HTTP front door over the request core, as a plain FastAPI app.

No Ray here: the Serve ingress (deployments/ingress.py) builds this app over a service whose
encoder and backend are deployment handles; tests build it over in-process models or fakes and
call it through `httpx.ASGITransport`.

Every request passes `Guard` first (request id, API key, body size), then its route: a typed body
(documented in /openapi.json), a job for the core service, a response. Failures are answered in one
place: `ScoringError` and request-validation handlers, and `Guard` for anything unexpected (a 500
naming the request id, never a traceback). The status of each error is the one table in
cluster/core/errors.py. Each protocol's routes live in their own module (ours.py, openrlhf.py,
vllm.py).
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers, MutableHeaders

from cluster.core.errors import (
    InvalidInput,
    RequestTooLarge,
    ScoringError,
    Unauthorized,
    from_ray,
    http_status,
)
from cluster.core.service import ScoringService
from cluster.http import schemas

logger = logging.getLogger("ray.serve")
RETRY_AFTER_S = 1
OPEN_PATHS = frozenset({"/healthz"})


def error_response(err: BaseException, request_id: str) -> JSONResponse:
    """The one error body: {"error": {code, message, request_id}}; 503 says when to retry."""
    err = from_ray(err)
    if isinstance(err, ScoringError):
        status, code, message = http_status(err), err.code, err.message
    else:
        status, code, message = 500, "internal_error", "internal error; quote the request id to the operator"
    if status >= 500:
        logger.error("request %s failed: %s: %s", request_id, type(err).__name__, err)
    body = schemas.ErrorResponse(error=schemas.ErrorBody(code=code, message=message, request_id=request_id))
    headers = {}  # the Serve proxy sets X-Request-Id itself
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def describe(errors: Sequence[dict]) -> str:
    """`conversations.0.1.role: Input should be 'system', 'user' or 'assistant'; ...`"""
    problems = []
    for e in errors[:10]:
        if e.get("type") == "json_invalid" and e["loc"][:1] == ("body",):  # FastAPI's own JSON error
            problems.append(f"body: Invalid JSON: {e.get('ctx', {}).get('error', e['msg'])}")
            continue
        loc = list(e["loc"])[1:] if e["loc"] and e["loc"][0] == "body" else list(e["loc"])
        # drop union-member labels such as "list[Message]" / "str" from the location
        loc = ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p == "str")))
        problems.append(f"{loc or 'body'}: {e['msg']}")
    return "; ".join(problems)


def json_errors(request: Request) -> list[dict] | None:
    """The body's problems as its schema states them validating the raw JSON (strict JSON types:
    "a valid array", "an object"; the messages this API has always given), where the route takes
    one body model; None otherwise (FastAPI's own errors are used)."""
    field = getattr(request.scope.get("route"), "body_field", None)
    schema = getattr(getattr(field, "field_info", None), "annotation", None)
    body = request.scope.get("state", {}).get("body")
    if body is None or not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        return None
    try:
        schema.model_validate_json(body)
    except ValidationError as err:
        return err.errors()
    return None


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or request.headers.get("x-request-id") or "-"


class Guard:
    """Pure ASGI middleware in front of every route: the request id (Serve's, from x-request-id),
    the API key (open paths excepted), the body size (at most `max_request_bytes` are ever read,
    whatever Content-Length says), a body read as JSON whatever its content type, and any
    unexpected exception answered as a 500 with the request id."""

    def __init__(self, app, *, api_keys: Sequence[str], max_request_bytes: int):
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.max_bytes = max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        rid = headers.get("x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            self._authorize(scope["path"], headers)
            receive = await self._bounded(scope, headers, receive)
            await self.app(scope, receive, tracked)
        except Exception as err:  # noqa: BLE001 - every failure becomes a mapped response
            if started:
                raise
            await error_response(err, rid)(scope, receive, send)

    def _authorize(self, path: str, headers: Headers) -> None:
        if path in OPEN_PATHS or not self.keys:
            return
        header = headers.get("authorization", "")
        token = header[7:].encode() if header.lower().startswith("bearer ") else b""
        # compare against every key, always, so timing says nothing about which matched
        if not any([hmac.compare_digest(token, key) for key in self.keys]):
            raise Unauthorized("missing or invalid API key (send Authorization: Bearer <key>)")

    async def _bounded(self, scope, headers: Headers, receive):
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise RequestTooLarge(f"request body of {length} bytes; the limit is {self.max_bytes}")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                raise RequestTooLarge(f"request body of more than {self.max_bytes} bytes; the limit is "
                                      f"{self.max_bytes}")
            more = message.get("more_body", False)
        body = b"".join(chunks)
        scope["state"]["body"] = body  # the validation handler re-reads it (see json_errors)
        if body and scope["method"] != "GET":
            MutableHeaders(scope=scope)["content-type"] = "application/json"  # JSON, as every client means
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def create_app(service: ScoringService, *, api_keys: Sequence[str] = (), max_request_bytes: int = 32 << 20,
               title: str = "scoring-cluster") -> FastAPI:
    """The app: every protocol's routes over `service`, behind `Guard`, with the error handlers."""
    from cluster.http import openrlhf, ours, vllm

    app = FastAPI(title=title, version="0.1.0")
    app.add_middleware(Guard, api_keys=list(api_keys), max_request_bytes=max_request_bytes)

    @app.exception_handler(ScoringError)
    async def scoring_error(request: Request, err: ScoringError) -> JSONResponse:
        return error_response(err, request_id(request))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(InvalidInput(describe(json_errors(request) or err.errors())), request_id(request))

    for module in (ours, openrlhf, vllm):
        app.include_router(module.router(service))
    return app
