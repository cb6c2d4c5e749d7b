"""The server's own settings, declared once: they generate ``serve``'s flags and are checked when built.

Request defaults are not here: they are the ``Sampling`` and ``Recursion`` the
server was started with (``--temperature``, ``--recursive``, …), and a request
overrides them field by field.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings, opt


@dataclass
class ServeSettings(Settings):
    host: str = opt("127.0.0.1", "Address to listen on; a non-loopback address needs --api-key.", "--host")
    port: int = opt(8000, "Port to listen on (0 = any free port; the one chosen is printed).", "--port", ge=0, le=65535)
    api_key: str | None = opt(None, "Require `Authorization: Bearer KEY` on every /v1 request.", "--api-key", envvar="PREFLEXOR_API_KEY")
    model_id: str = opt("preflexor", "The model id clients ask for (listed by /v1/models).", "--served-model-name")
    parallel: int = opt(
        1,
        "Requests run at once; a GGUF model decodes their tokens in one batch (its KV cache grows to N windows of --ctx).",
        "--parallel",
        "-np",
        ge=1,
        le=16,
    )
    max_queue: int = opt(16, "Requests that may wait while the running ones finish; more get 503 with Retry-After.", "--max-queue", ge=0)
    max_body: int = opt(1 << 20, "Largest request body in bytes.", "--max-body", ge=1024)
    max_tokens_limit: int = opt(4096, "Largest max_tokens a request may ask for (per model call).", "--max-tokens-limit", ge=1)
    max_rounds: int = opt(8, "Most rounds a request may ask for.", "--max-rounds", ge=1, le=64)
    effort_low: int = opt(1, "Rounds for reasoning_effort=low (and minimal).", "--effort-low", ge=1, le=64)
    effort_medium: int = opt(2, "Rounds for reasoning_effort=medium.", "--effort-medium", ge=1, le=64)
    effort_high: int = opt(3, "Rounds for reasoning_effort=high.", "--effort-high", ge=1, le=64)
    keepalive: float = opt(10.0, "Seconds of silence on a stream before an SSE comment keeps it alive.", "--keepalive", gt=0)
    upstream_api_key: str | None = opt(None, "API key for an OpenAI-compatible --model/--critic URL (default: $OPENAI_API_KEY).", "--upstream-api-key")

    def effort_rounds(self, effort: str) -> int | None:
        """Rounds for a ``reasoning_effort`` value; ``None`` for an unknown one. ``none`` is one round."""
        return {"none": 1, "minimal": self.effort_low, "low": self.effort_low, "medium": self.effort_medium, "high": self.effort_high}.get(effort)
