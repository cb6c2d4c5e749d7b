"""``GET /``: the playground, one static page shipped in the package (plain HTML, CSS and JS; no CDN, no build step).

The page streams a question through ``/v1/chat/completions`` with the transcript and
draws each round as a card (static/playground.js). It is served without a key, as a
browser cannot send one when it opens a page; every request it makes sends the key the
user types. What it needs to know about this server (model id, modes, request defaults,
whether a key is required) is written into the page as JSON data, never as code.
"""

from __future__ import annotations

import json
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..config import Recursion, Sampling
from .settings import ServeSettings

_FILES = {
    "/": ("playground.html", "text/html; charset=utf-8"),
    "/playground.css": ("playground.css", "text/css"),
    "/playground.js": ("playground.js", "text/javascript"),
}
_CONFIG_SLOT = "{} <!--config-->"
# The page talks to this server only, and runs no inline script: model text can never become code.
_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
}


def page_config(settings: ServeSettings, sampling: Sampling, recursion: Recursion) -> dict:
    from ..reasoning.strategies import STRATEGIES

    return {
        "model": settings.model_id,
        "modes": {name: s.summary for name, s in STRATEGIES.items()},
        "key_required": bool(settings.api_key),
        "max_rounds": settings.max_rounds,
        "max_tokens_limit": settings.max_tokens_limit,
        "defaults": {
            "rounds": recursion.rounds,
            "mode": recursion.mode,
            "temperature": sampling.temperature,
            "max_tokens": sampling.max_tokens,
            "thinking_budget": recursion.thinking_budget,
        },
    }


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def routes(settings: ServeSettings, sampling: Sampling, recursion: Recursion) -> list[Route]:
    """The page and its two files; the page is read once, with this server's settings written in."""
    # "<" escaped: the JSON sits in a <script type="application/json"> element and must not close it
    config = json.dumps(page_config(settings, sampling, recursion)).replace("<", "\\u003c")
    bodies = {}
    for path, (name, media) in _FILES.items():
        text = _read(name)
        if path == "/":
            if _CONFIG_SLOT not in text:
                raise RuntimeError("playground.html lost its config slot")
            text = text.replace(_CONFIG_SLOT, config)
        bodies[path] = (text.encode(), media)

    async def serve_file(request: Request) -> Response:
        body, media = bodies[request.url.path]
        return Response(body, media_type=media, headers=_HEADERS)

    return [Route(path, serve_file, methods=["GET"]) for path in _FILES]
