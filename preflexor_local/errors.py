"""The small exception hierarchy the CLI turns into one-line messages.

Every error a user can cause (bad path, bad file, offline hub id, unreachable
server, prompt too long, ...) is a ``PreflexorError`` with a message that names
what was wrong and a ``hint`` that says what to do. Anything else that escapes
is a bug and is reported as one.
"""

from __future__ import annotations


class PreflexorError(Exception):
    """Base class: ``str(err)`` is the one-line message, ``err.hint`` the fix."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(PreflexorError):
    """The command line or the API was called with invalid values; ``param`` names the setting when there is one."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, param: str | None = None):
        super().__init__(message, hint)
        self.param = param


class ModelNotFoundError(PreflexorError):
    """A model spec names nothing that exists locally (offline by design)."""


class InvalidModelError(PreflexorError):
    """A file or directory exists but is not a usable model (bad magic, truncated, unknown arch)."""


class BackendUnavailableError(PreflexorError):
    """The engine a model needs is not installed (an optional extra is missing)."""


class ContextOverflowError(PreflexorError):
    """A prompt does not fit the model's context window."""


class ServerError(PreflexorError):
    """An OpenAI-compatible server could not be reached or answered with an error."""


class GenerationError(PreflexorError):
    """A backend failed while generating."""
