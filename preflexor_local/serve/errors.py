"""OpenAI-style error objects: every failure a client can see is ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

from ..errors import (
    BackendUnavailableError,
    ContextOverflowError,
    GenerationError,
    PreflexorError,
    ServerError,
    UsageError,
)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    502: "upstream_error",
}


class APIError(Exception):
    """An error answered to the client as an OpenAI error object with an HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def body(self) -> dict:
        kind = _TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def from_library(err: PreflexorError) -> APIError:
    """The HTTP face of a library error: the user's fault is 400, an upstream's 502, ours 500."""
    message = f"{err.message} ({err.hint})" if err.hint else err.message
    if isinstance(err, ContextOverflowError):
        return APIError(400, message, param="messages", code="context_length_exceeded")
    if isinstance(err, UsageError):
        return APIError(400, message, param=getattr(err, "param", None), code="invalid_value")
    if isinstance(err, ServerError):
        return APIError(502, message, code="upstream_error")
    if isinstance(err, (GenerationError, BackendUnavailableError)):
        return APIError(500, message, code="generation_error")
    return APIError(500, message, code="server_error")
