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

import asyncio
import base64
import binascii
import hashlib
import hmac
import importlib
import ipaddress
import json
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.core.errors import (
    ConfigError,
    HeadersTooLarge,
    InvalidInput,
    RequestTimeout,
    RequestTooLarge,
    ScoringError,
    Unauthorized,
    UnsupportedMediaType,
    from_ray,
    http_status,
    location,
)
from cluster.core.memory import return_big_blocks
from cluster.core.service import ScoringService
from cluster.core.version import __version__
from cluster.http import schemas

logger = logging.getLogger("ray.serve")
RETRY_AFTER_S = 1
OPEN_PATHS = frozenset({"/healthz", "/health"})  # load balancers and orchestrators probe these


@dataclass(frozen=True)
class Failure:
    """An error as a client is told it: HTTP status, stable code, message, request id."""

    status: int
    code: str
    message: str
    request_id: str


# how one protocol's clients read an error: Failure -> (status, body). Ours is the default; the
# vLLM-, SGLang- and TEI-compatible routes answer in their servers' own shapes (see those modules).
ErrorStyle = Callable[[Failure], tuple[int, dict]]


def ours_error(f: Failure) -> tuple[int, dict]:
    """The one error body of our routes: {"error": {code, message, request_id}}."""
    body = schemas.ErrorResponse(error=schemas.ErrorBody(code=f.code, message=f.message, request_id=f.request_id))
    return f.status, body.model_dump()


MAX_MESSAGE = 2000  # characters of an error message; what a client sent is never echoed at length


def printable(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` as a JSON body can carry it (a lone surrogate escaped) and at most `limit` characters."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure(err: BaseException, request_id: str) -> Failure:
    err = from_ray(err)
    if isinstance(err, StarletteHTTPException):  # no such route, or not with this method
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return Failure(err.status_code, code, printable(str(err.detail)), request_id)
    if isinstance(err, ScoringError):
        return Failure(http_status(err), err.code, printable(err.message), request_id)
    return Failure(500, "internal_error", "internal error; quote the request id to the operator", request_id)


def error_response(err: BaseException, request_id: str, style: ErrorStyle = ours_error) -> JSONResponse:
    """`err` answered in `style`; a 5xx is logged with the request id; 503 says when to retry."""
    f = failure(err, request_id)
    if f.status >= 500:
        cause = from_ray(err)
        logger.error("request %s failed: %s: %s", request_id, type(cause).__name__, cause)
    status, body = style(f)
    headers = dict(getattr(err, "headers", None) or {})  # a 405's Allow; the Serve proxy sets X-Request-Id itself
    if f.status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if f.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, headers=headers)


def describe(errors: Sequence[dict]) -> str:
    """`conversations[0][1].content: Input should be a valid string; ...`: each problem named by its
    location. A validator that raised one of our own `ScoringError`s (the in-process checks of
    cluster/core, run by the schemas) wrote the whole location itself: its message is used as is,
    so HTTP and in-process name a bad item in the same words."""
    problems = []
    for e in errors[:10]:
        if e.get("type") == "json_invalid" and e["loc"][:1] == ("body",):  # FastAPI's own JSON error
            problems.append(f"body: Invalid JSON: {e.get('ctx', {}).get('error', e['msg'])}")
            continue
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, ScoringError):
            problems.append(printable(cause.message, 300))
            continue
        loc = location(list(e["loc"])[1:] if e["loc"] and e["loc"][0] == "body" else list(e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        problems.append(printable(f"{loc or 'body'}: {msg}", 300))
    return printable("; ".join(problems))


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
        if any(e.get("type") == "json_invalid" for e in err.errors()) and _python_json(body):
            return None  # JSON Python's parser takes (a lone surrogate escape): FastAPI's errors are the true ones
        return err.errors()
    return None


def _python_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


QUERY_KEY = b"api_key"
MAX_HEADER_BYTES = 64 << 10  # names and values of all of a request's headers together
# the bodies read as JSON: JSON's own types, and curl's default for `-d` (clients that forget the header)
JSON_TYPES = ("application/json", "text/json", "application/x-www-form-urlencoded")


def json_content_type(value: str) -> bool:
    """Content-Type `value` (parameters aside) names a body this app reads as JSON: absent, one of
    JSON_TYPES, or a structured `+json` type."""
    media = value.partition(";")[0].strip().lower()
    return not media or media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
HASHED = "sha256:"


def bearer_or_basic(header: str) -> bytes | None:
    """The key in `Bearer <key>`, or the password in `Basic base64(user:<key>)`."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip().encode("latin-1")  # the header's own bytes (ASGI headers are latin-1)
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return None
    return None


def take_query_key(scope) -> bytes | None:
    """The `api_key` query parameter's value (the last, if repeated), removed from the request's
    query string, so no route, log line or error message ever sees it."""
    query: bytes = scope.get("query_string", b"")
    if not query:
        return None
    kept, value = [], None
    for pair in query.split(b"&"):
        name, _, raw = pair.partition(b"=")
        if unquote_to_bytes(name.replace(b"+", b" ")) == QUERY_KEY:
            value = unquote_to_bytes(raw.replace(b"+", b" "))
        else:
            kept.append(pair)
    scope["query_string"] = b"&".join(kept)
    return value


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or request.headers.get("x-request-id") or "-"


def style_of(request: Request) -> ErrorStyle:
    route = request.scope.get("route")
    return request.app.state.error_styles.get(getattr(route, "path", route_path(request.scope)), ours_error)


def route_path(scope) -> str:
    """The path the app routes on: without the `root_path` a Serve route_prefix (or a proxy) puts
    in front of it, as Starlette's router takes it."""
    path, root = scope.get("path", "/"), scope.get("root_path", "")
    return (path[len(root) :] or "/") if root and path.startswith(root) else path


def _loopback(client) -> bool:
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except (TypeError, ValueError, IndexError):
        return False


def warn_if_open(host: str | None, client=None) -> None:
    """An app with no API key, reachable from other machines, says so loudly: at start when Serve
    listens beyond loopback (`host`), else at its first request from another machine (`client`)."""
    if host is not None:
        try:
            if host == "localhost" or ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
        where = f"Serve listens on {host}"
    elif client is not None:
        where = f"a request came from {client[0]}"
    else:
        return
    logger.warning(
        "NO API KEY IS SET and %s: anyone who can reach this port can use the models. Set api_keys, "
        "api_keys_file or SCORING_API_KEYS (in the environment of `ray start`), or listen on 127.0.0.1 "
        "(http_options.host).",
        where,
    )


class Guard:
    """Pure ASGI middleware in front of every route: the request id (Serve's, from x-request-id),
    the API key (open paths excepted), the body size (at most `max_request_bytes` are ever read,
    whatever Content-Length says), the headers' size (431), a body that is JSON by its Content-Type and
    not compressed (else 415), WebSocket handshakes refused (no route takes one), and any
    unexpected exception answered as a 500 with the request id."""

    def __init__(
        self,
        app,
        *,
        api_keys: Sequence[str],
        max_request_bytes: int,
        trusted_networks: Sequence[str] = (),
        styles: dict[str, ErrorStyle] | None = None,
        body_timeout_s: float = 30.0,
    ):
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.warned_open = False
        # every key kept as its SHA-256 digest (configured as "sha256:<hex>", no config or log holds
        # the key itself); digests of equal length are what is compared, so timing tells nothing
        self.digests = [
            (k[7:] if k.startswith(HASHED) else hashlib.sha256(k.encode()).hexdigest()).lower().encode()
            for k in api_keys
        ]
        self.networks = [ipaddress.ip_network(n, strict=False) for n in trusted_networks]
        self.max_bytes = max_request_bytes
        self.styles = styles or {}  # path -> how that protocol's clients read an error

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            # no route takes a WebSocket: refused before anything can log its URL, the key taken out
            take_query_key(scope)
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        rid = headers.get("x-request-id", "")
        if not REQUEST_ID.fullmatch(rid):  # a client's id is echoed only when it is a sane one
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        query_key = take_query_key(scope)  # out of the URL before anything can log it
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        path = route_path(scope)
        try:
            self._check_headers(scope, headers)
            self._authorize(scope, path, headers, query_key)
            receive = await self._bounded(scope, headers, receive)
            await self.app(scope, receive, tracked)
        except Exception as err:  # noqa: BLE001 - every failure becomes a mapped response
            if started:
                raise
            style = self.styles.get(path, ours_error)
            await error_response(err, rid, style)(scope, receive, send)

    def _check_headers(self, scope, headers: Headers) -> None:
        """Headers within MAX_HEADER_BYTES (431: what the front's own limit does not catch); a body
        that is JSON by its Content-Type (415), not compressed (415: no Content-Encoding is taken)."""
        size = sum(len(name) + len(value) for name, value in scope.get("headers", ()))
        if size > MAX_HEADER_BYTES:
            raise HeadersTooLarge(f"request headers of {size} bytes; the limit is {MAX_HEADER_BYTES}")
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise UnsupportedMediaType(
                f"Content-Encoding {printable(encoding, 40)!r} is not supported; send the body uncompressed"
            )
        if scope["method"] not in ("GET", "HEAD") and not json_content_type(headers.get("content-type", "")):
            raise UnsupportedMediaType(
                f"Content-Type {printable(headers.get('content-type', ''), 80)!r}: the body must be JSON "
                "(send Content-Type: application/json)"
            )

    def _authorize(self, scope, path: str, headers: Headers, query_key: bytes | None) -> None:
        """A key in `Authorization: Bearer <key>`; or, for clients that can set only a URL (OpenRLHF,
        verl), in its query string (`?api_key=<key>`) or as its password (`http://any:<key>@host`,
        which HTTP libraries send as Basic auth); or a client address in `trusted_networks`."""
        if not self.digests:
            if not self.warned_open and not _loopback(scope.get("client")):
                self.warned_open = True
                warn_if_open(None, scope.get("client"))
            return
        if path in OPEN_PATHS:
            return
        if self.networks and self._trusted(scope.get("client"), headers):
            return
        offered = [bearer_or_basic(headers.get("authorization", "")), query_key]
        # every offered key against every configured key, always: timing says nothing about which matched
        matches = [
            hmac.compare_digest(hashlib.sha256(token).hexdigest().encode(), digest)
            for token in offered
            if token is not None
            for digest in self.digests
        ]
        if not any(matches):
            raise Unauthorized(
                "missing or invalid API key (send Authorization: Bearer <key>, or api_key=<key> "
                "in the URL's query string)"
            )

    def _trusted(self, client, headers: Headers) -> bool:
        """The client's address is in a trusted network. A request that came through a proxy
        (X-Forwarded-For / Forwarded; Serve's uvicorn takes the client's address from them when
        the peer is local) is never trusted by address: that header is the client's to write."""
        if "x-forwarded-for" in headers or "forwarded" in headers:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except (TypeError, ValueError, IndexError):
            return False
        forms = {address, getattr(address, "ipv4_mapped", None) or address}
        return any(form in net for net in self.networks for form in forms if form.version == net.version)

    async def _bounded(self, scope, headers: Headers, receive):
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise RequestTooLarge(f"request body of {length} bytes; the limit is {self.max_bytes} (max_request_bytes)")
        chunks, size, more = [], 0, True
        try:
            async with asyncio.timeout(self.body_timeout_s):  # a stalled body must not hold its slot
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        break
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > self.max_bytes:  # counted as it arrives: chunked bodies too
                        raise RequestTooLarge(
                            f"request body of more than {self.max_bytes} bytes; the limit is "
                            f"{self.max_bytes} (max_request_bytes)"
                        )
                    more = message.get("more_body", False)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self.body_timeout_s:g}s (body_timeout_s); {size} bytes came"
            ) from None
        body = b"".join(chunks)
        scope["state"]["body"] = body  # the validation handler re-reads it (see json_errors)
        if body and scope["method"] != "GET":
            MutableHeaders(scope=scope)["content-type"] = "application/json"  # JSON_TYPES all read as JSON
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app takes at the request's path (the Allow header of a 405)."""
    return sorted(request.app.state.methods.get(route_path(request.scope), ()))


def create_app(
    service: ScoringService,
    *,
    api_keys: Sequence[str] = (),
    max_request_bytes: int = 32 << 20,
    trusted_networks: Sequence[str] = (),
    title: str = "scoring-cluster",
    docs: bool = False,
    body_timeout_s: float = 30.0,
) -> FastAPI:
    """The app: every protocol's routes over `service`, behind `Guard`, with the error handlers.
    `docs`: serve /docs, /redoc and /openapi.json (behind the API key, as every route)."""
    from cluster.http import PROTOCOLS
    from cluster.http import openapi as openapi_document

    if trusted_networks and not api_keys:
        raise ConfigError(
            "trusted_networks without api_keys: every client would be let in; set api_keys "
            "(the networks are the clients that need no key)"
        )
    return_big_blocks()  # the app's process returns a big body's memory after it
    app = FastAPI(
        title=title, version=__version__, **({} if docs else {"docs_url": None, "redoc_url": None, "openapi_url": None})
    )
    styles: dict[str, ErrorStyle] = {}
    app.state.error_styles = styles
    methods: dict[str, set[str]] = {}  # path -> the methods its routes take (a 405's Allow)
    app.state.methods = methods
    app.add_middleware(
        Guard,
        api_keys=list(api_keys),
        max_request_bytes=max_request_bytes,
        trusted_networks=list(trusted_networks),
        styles=styles,
        body_timeout_s=body_timeout_s,
    )

    @app.exception_handler(ScoringError)
    async def scoring_error(request: Request, err: ScoringError) -> JSONResponse:
        return error_response(err, request_id(request), style_of(request))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = InvalidInput(describe(json_errors(request) or err.errors()))
        return error_response(problems, request_id(request), style_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def no_route(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 400:  # FastAPI's "error parsing the body": bytes json.loads refused
            return error_response(
                InvalidInput("body: Invalid JSON: not UTF-8, nested too deep, or a number too long"),
                request_id(request),
                style_of(request),
            )
        if err.status_code == 404 and request.scope.get("route") is None:
            err = StarletteHTTPException(
                404, f"no route {request.method} {route_path(request.scope)[:200]}; the README lists the routes"
            )
        elif err.status_code == 405:
            allowed = allowed_methods(request)
            err = StarletteHTTPException(
                405,
                f"{route_path(request.scope)[:200]} does not take {request.method}; it takes {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        return error_response(err, request_id(request), style_of(request))

    error_models: dict[str, type[BaseModel]] = {}  # path -> its protocol's error body (/openapi.json)
    routes: list = []
    for module in (importlib.import_module(f"cluster.http.{name}") for name in PROTOCOLS):
        router = module.router(service)
        for route in router.routes:
            styles[route.path] = getattr(module, "ERROR_STYLE", ours_error)
            methods.setdefault(route.path, set()).update(getattr(route, "methods", None) or ())
            error_models[route.path] = getattr(module, "ERROR_MODEL", schemas.ErrorResponse)
        routes += router.routes
        app.include_router(router)
    # /openapi.json: every route's error statuses in its protocol's body, the security schemes, the item limit
    openapi_document.install(
        app,
        routes,
        styles=styles,
        models=error_models,
        failure_of=lambda err: failure(err, "-"),
        keyed=bool(api_keys),
        open_paths=OPEN_PATHS,
        max_items=getattr(service, "max_items", None),
    )
    return app
