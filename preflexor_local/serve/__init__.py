"""``preflexor-local serve``: the recursive engine behind an OpenAI-compatible HTTP API.

Modules, one job each: ``settings`` (the server's typed settings and flags),
``auth`` (who may connect), ``request`` (request body -> ``Sampling``/``Recursion``),
``worker`` (the thread that owns the models and runs requests in order),
``stream`` (engine events -> reasoning/content pieces and SSE chunks), ``app``
(the Starlette routes), ``server`` (bind, load, run until a signal).

>>> from preflexor_local.serve import serve, ServeSettings  # doctest: +SKIP
>>> serve("model.gguf", settings=ServeSettings(port=8080))  # doctest: +SKIP
"""

from __future__ import annotations

from .server import serve
from .settings import ServeSettings

__all__ = ["ServeSettings", "serve"]
