"""One closed set of errors, each mapped to an HTTP status in one table.

Every error a user can cause or meet is one of these classes. The message says what is wrong and
what to do about it; it never carries a traceback. The Serve layer turns them into responses with
`http_status(err)`; library users catch `ScoringError` (or the specific class).
"""

from __future__ import annotations


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
    Overloaded: 503,
    ModelLoadError: 500,
    ModelFailure: 500,
}


def http_status(err: BaseException) -> int:
    for cls in type(err).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500
