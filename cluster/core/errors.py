"""One closed set of errors, each mapped to an HTTP status in one table.

Every error a user can cause or meet is one of these classes. The message says what is wrong and
what to do about it; it never carries a traceback. The Serve layer turns them into responses with
`http_status(err)`; library users catch `ScoringError` (or the specific class).
"""

from __future__ import annotations

from collections.abc import Sequence


class ScoringError(Exception):
    """Base class: `code` is a stable machine-readable name, `str(err)` the human message."""

    code = "scoring_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(ScoringError, ValueError):
    """A request item is malformed: empty conversation, unknown role, non-string content, ..."""

    code = "invalid_input"


class InputTooLong(ScoringError, ValueError):
    """An item is longer than the model's max_length and the spec says truncation="error"."""

    code = "input_too_long"


class ConfigError(ScoringError, ValueError):
    """A ModelSpec or app config is invalid (unknown key, bad value, impossible combination)."""

    code = "invalid_config"


class ModelLoadError(ScoringError):
    """The model path does not hold a usable model of the requested kind."""

    code = "model_load_error"


class UnknownModel(ScoringError, LookupError):
    """A request names a model the app does not serve."""

    code = "unknown_model"


class Unauthorized(ScoringError):
    """Missing or wrong API key."""

    code = "unauthorized"


class RequestTooLarge(ScoringError):
    """A request exceeds the item-count or byte limit."""

    code = "request_too_large"


class RequestTimeout(ScoringError):
    """The request body did not arrive in time (a slow or stalled client)."""

    code = "request_timeout"


class UnsupportedMediaType(ScoringError):
    """A body that is not JSON by its Content-Type, or sent with a Content-Encoding the app does not take."""

    code = "unsupported_media_type"


class HeadersTooLarge(ScoringError):
    """The request's headers exceed the app's limit."""

    code = "headers_too_large"


class Overloaded(ScoringError):
    """The queue is full; retry after a moment."""

    code = "overloaded"


class ModelFailure(ScoringError):
    """The model raised while scoring (out of memory, device error, ...)."""

    code = "model_failure"


# The one mapping from error class to HTTP status. Anything not listed is a 500.
HTTP_STATUS: dict[type[ScoringError], int] = {
    InvalidInput: 422,
    InputTooLong: 422,
    ConfigError: 422,
    Unauthorized: 401,
    UnknownModel: 404,
    RequestTooLarge: 413,
    RequestTimeout: 408,
    UnsupportedMediaType: 415,
    HeadersTooLarge: 431,
    Overloaded: 503,
    ModelLoadError: 500,
    ModelFailure: 500,
}


def http_status(err: BaseException) -> int:
    for cls in type(err).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


# Ray's exceptions, known by class name and module so that the request core never imports Ray: Serve's
# back-pressure, and a replica or actor that died or restarted mid-call (their subclasses included)
RAY_BACKPRESSURE = frozenset({"BackPressureError"})
RAY_LOST = frozenset({"DeploymentUnavailableError", "RayActorError", "ActorUnavailableError"})


def _ray_error(err: BaseException, names: frozenset[str]) -> bool:
    return any(c.__name__ in names and c.__module__.startswith("ray.") for c in type(err).__mro__)


def from_ray(err: BaseException, model: str | None = None, *, transient: bool = True) -> BaseException:
    """A failure that crossed Ray, as the error the caller should meet (the one place that reads
    Ray's wrappers; Serve's ingress and handles, RewardClient's handle transport and the pipeline
    use it):

    - the ScoringError a replica, stage or actor raised, unwrapped from RayTaskError (or rebuilt
      from its text, where Ray Data kept only that: `cluster.core.errors.InvalidInput: <message>`);
    - with `transient`, Overloaded for what waiting cures: Serve's back-pressure, a replica or
      actor that died or restarted mid-call (scoring is idempotent, so a retry is safe);
    - else the underlying cause, unwrapped.
    """
    import re

    cause = err
    while getattr(cause, "cause", None) is not None and cause is not cause.cause:  # RayTaskError chain
        cause = cause.cause
    if isinstance(cause, ScoringError):
        return cause
    if transient:
        if _ray_error(cause, RAY_BACKPRESSURE) or _ray_error(err, RAY_BACKPRESSURE):
            return Overloaded("the model's queue is full; retry after a moment")
        if _ray_error(cause, RAY_LOST) or _ray_error(err, RAY_LOST):
            who = f"a replica of model '{model}'" if model else "a replica"
            return Overloaded(f"{who} became unavailable; retry")
    match = re.search(r"cluster\.core\.errors\.(\w+): (.+)", str(err))
    cls = globals().get(match.group(1)) if match else None
    if isinstance(cls, type) and issubclass(cls, ScoringError):
        return cls(match.group(2).strip())
    return cause


UNION_MEMBERS = frozenset({"str", "int", "float", "bool", "bytes", "none"})


def location(loc: Sequence) -> str:
    """pydantic's error location as every message of this project writes one (the in-process
    validators' form): list indices in brackets, fields dotted, `conversations[1][0].role`. Union
    members' labels ("list[Message]", "str") are not part of the body's shape and are left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not ("[" in part or part in UNION_MEMBERS):
            out += f".{part}" if out else part
    return out
