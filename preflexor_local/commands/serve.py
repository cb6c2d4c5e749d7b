"""``preflexor-local serve``: recursive reasoning behind an OpenAI-compatible API on this machine.

The flags are generated from the typed settings: the server's own
(``ServeSettings``) and the request defaults (``Recursion``, ``Sampling``), plus
the model load options (``LoadOptions``; its ``--api-key`` is the server's own
here, and ``--upstream-api-key`` reaches an OpenAI-compatible --model).
"""

from __future__ import annotations

import dataclasses

import click

from ..config import LoadOptions, Recursion, Retrieval, Sampling, cli_options, from_kwargs
from ..serve.settings import ServeSettings
from .options import model_roles, tags_option


@click.command("serve")
@model_roles()
@cli_options(ServeSettings)
@cli_options(Recursion)
@cli_options(Sampling)
@cli_options(LoadOptions, exclude=("api_key",))
@cli_options(Retrieval)
@tags_option()
def serve(model, critic, integrator, tags, **kwargs):
    """Serve recursive reasoning over an OpenAI-compatible API (127.0.0.1:8000 by default).

    \b
    preflexor-local serve
    preflexor-local serve --model ./m.gguf --critic ./c.gguf --port 8080 --recursive 2 --api-key "$KEY"
    curl -s localhost:8000/v1/models

    Endpoints: POST /v1/chat/completions and POST /v1/responses (stream or not), POST /v1/completions,
    GET /v1/models, GET /health, and the playground page at GET /.
    Per request: extra_body={"preflexor": {"rounds": 3, "mode": "reflect", "integrate": true}} or
    reasoning_effort=none|low|medium|high. The answer is message.content; every round before it is in
    message.reasoning_content and message.reasoning (delta.* when streaming).
    """
    from ..format import ThinkingFormat
    from ..serve import serve as run_server

    settings = from_kwargs(ServeSettings, kwargs)
    recursion = from_kwargs(Recursion, kwargs)
    sampling = from_kwargs(Sampling, kwargs)
    options = dataclasses.replace(from_kwargs(LoadOptions, kwargs), api_key=settings.upstream_api_key)
    retrieval = from_kwargs(Retrieval, kwargs)
    run_server(
        model,
        critic,
        integrator,
        settings=settings,
        sampling=sampling,
        recursion=recursion,
        options=options,
        fmt=ThinkingFormat.preset(tags),
        retrieval=retrieval,
    )
