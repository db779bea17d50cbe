"""/openapi.json as the app answers (`create_app(..., docs=True)`): FastAPI's document of the routes and
their bodies (constraints included: they are the request models' own), completed with what FastAPI
cannot know, in one post-processing of `app.openapi()`:

- every error status a route can answer, with its protocol's error body (the route module's
  `ERROR_MODEL`: ours, vLLM's, SGLang's or TEI's) and the headers that come with it (401:
  WWW-Authenticate, 503: Retry-After). The statuses are found by putting each error the route can
  meet through the route's own `ERROR_STYLE`, the function that answers it, so the document and the
  answers cannot drift apart; FastAPI's `{"detail"}` 422, which no route answers, is gone (a 405,
  with `Allow`, is a path's answer to a method none of its operations takes: no operation lists it);
- the security schemes (the API key as a Bearer token, as a Basic password, or as `?api_key=`), any
  one of which is required on every route but the open ones, when the app has keys;
- the item limit (`max_items_per_request`) as `maxItems` on the lists that count as a request's
  items (marked `COUNTED` in the request models, cluster/http/schemas.py).

No Ray and no app import here (create_app passes in what is needed), so the layers stay acyclic.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel

from cluster.core.errors import (
    HeadersTooLarge,
    InputTooLong,
    InvalidInput,
    ModelFailure,
    Overloaded,
    RequestTimeout,
    RequestTooLarge,
    Unauthorized,
    UnknownModel,
    UnsupportedMediaType,
)
from cluster.http.schemas import COUNTED_KEY

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "The API key: `Authorization: Bearer <key>`."},
    "basic": {
        "type": "http",
        "scheme": "basic",
        "description": "The API key as the password, any user name (`http://any:<key>@host`, for clients "
        "that can set only a URL).",
    },
    "api_key": {
        "type": "apiKey",
        "in": "query",
        "name": "api_key",
        "description": "The API key in the query string (`?api_key=<key>`, for clients that can set only a URL).",
    },
}
ANY_KEY = [{name: []} for name in SECURITY_SCHEMES]  # one of them, whichever the client can send


class InternalError(Exception):
    """What the app meets unexpectedly (answered as a 500 naming the request id)."""


WHY: dict[type[Exception], str] = {
    Unauthorized: "a missing or wrong API key",
    HeadersTooLarge: "request headers over the app's limit",
    RequestTooLarge: "a body over max_request_bytes, or more items than max_items_per_request",
    RequestTimeout: "a body that did not arrive within body_timeout_s",
    UnsupportedMediaType: "a body that is not JSON by its Content-Type, or compressed (Content-Encoding)",
    InvalidInput: "a body that is not valid (each problem named by its location)",
    InputTooLong: "an input over the model's max_length, where it is refused rather than cut",
    UnknownModel: "a model that is not served here",
    Overloaded: "the model's queue is full: retry after Retry-After seconds",
    ModelFailure: "the model failed while scoring",
    InternalError: "an unexpected error: quote the request id to the operator",
}
# what every request can meet in Guard, whatever its route
EVERY_ROUTE = (HeadersTooLarge, RequestTooLarge, RequestTimeout, InternalError)
# what a route that takes a body meets in its body and in the request core
BODY_ROUTE = (UnsupportedMediaType, InvalidInput, InputTooLong, UnknownModel, RequestTooLarge, Overloaded, ModelFailure)
# headers an error answer carries, by the error's own status (cluster/http/app.py `error_response`)
HEADERS = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    503: {
        "Retry-After": {"description": "seconds to wait before a retry", "schema": {"type": "integer", "minimum": 0}}
    },
}


def route_errors(route: APIRoute, keyed: bool, open_paths: Collection[str]) -> list[type[Exception]]:
    errors = list(EVERY_ROUTE)
    if keyed and route.path not in open_paths:
        errors.append(Unauthorized)
    if route.body_field is not None:
        errors += BODY_ROUTE
    return list(dict.fromkeys(errors))


def error_responses(
    errors: list[type[Exception]],
    style: Callable[[Any], tuple[int, dict]],
    model: type[BaseModel],
    failure_of: Callable[[BaseException], Any],
) -> dict[str, dict]:
    """{status: the OpenAPI response} for these errors as `style` answers them (`failure_of(err)`:
    the app's Failure of an error, its own status and code)."""
    found: dict[int, list[tuple[type[Exception], dict]]] = {}
    for cls in errors:
        f = failure_of(cls("-"))
        status, body = style(f)
        model.model_validate(body)  # the body the document names is the one answered
        found.setdefault(status, []).append((cls, HEADERS.get(f.status, {})))
    out = {}
    for status, causes in sorted(found.items()):
        response: dict[str, Any] = {
            "description": sentence("; ".join(WHY[cls] for cls, _ in causes)),
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
        headers = {name: dict(h) for _, hs in causes for name, h in hs.items()}
        for name, header in headers.items():
            header["required"] = all(name in hs for _, hs in causes)  # sent with every cause of the status
        if headers:
            response["headers"] = headers
        out[str(status)] = response
    return out


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def model_schemas(model: type[BaseModel]) -> dict[str, dict]:
    """`model`'s JSON schema and those it refers to, as components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {model.__name__: schema, **defs}


def counted(node: Any, max_items: int | None) -> None:
    """Every COUNTED list in a schema gets its maxItems (or none, where the app sets no limit): the
    limit over the number of the core's items each element is."""
    if isinstance(node, dict):
        per_element = node.pop(COUNTED_KEY, 0)
        if per_element and max_items is not None:
            node["maxItems"] = max_items // per_element
        for value in node.values():
            counted(value, max_items)
    elif isinstance(node, list):
        for value in node:
            counted(value, max_items)


def complete(
    document: dict,
    routes: list,
    *,
    styles: Mapping[str, Callable],
    models: Mapping[str, type[BaseModel]],
    failure_of: Callable[[BaseException], Any],
    keyed: bool,
    open_paths: Collection[str],
    max_items: int | None,
) -> dict:
    """FastAPI's `document` of `routes` completed (see the module's docstring); `styles` and `models`:
    each route path's error style and error body model."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        errors = route_errors(route, keyed, open_paths)
        model = models[route.path]
        documented = error_responses(errors, styles[route.path], model, failure_of)
        schemas.update(model_schemas(model))
        for method in route.methods:
            operation = document["paths"][route.path_format].get(method.lower())
            if operation is None:
                continue
            responses = operation["responses"]
            responses.pop("422", None)  # FastAPI's {"detail"}: no route answers it
            responses.update(documented)
            if keyed and route.path not in open_paths:
                operation["security"] = ANY_KEY
    if keyed:
        components["securitySchemes"] = SECURITY_SCHEMES
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    counted(schemas, max_items)
    return document


def install(app, routes: list, **how) -> None:
    """`app.openapi()` (what /openapi.json serves) becomes FastAPI's document of `routes` (the
    protocol routers' routes, as defined), `complete`d once with `how`."""
    fastapi_openapi = app.openapi
    done: list[dict] = []  # the document FastAPI cached, once completed

    def openapi() -> dict:
        document = fastapi_openapi()
        if not done or done[0] is not document:
            done[:] = [complete(document, routes, **how)]
        return document

    app.openapi = openapi
