"""``serve()``: check the settings, bind, load the models once, serve until Ctrl-C / SIGTERM.

Everything a user can get wrong (a public address without a key, a port in use,
defaults over the server's own caps, a bad model spec) is refused before the
model loads, as a ``PreflexorError``. On SIGINT/SIGTERM the running and
waiting requests are stopped (their streams end with an error event), uvicorn
closes the connections, the worker thread finishes the token it is on, the
models are freed, and ``serve()`` returns.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
from collections.abc import Callable

from ..config import LoadOptions, Recursion, Retrieval, Sampling
from ..errors import UsageError
from ..extras import require
from ..format import ThinkingFormat
from .auth import check_bind
from .settings import ServeSettings


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def serve(
    model: str | None = None,
    critic: str | None = None,
    integrator: str | None = None,
    *,
    settings: ServeSettings | None = None,
    sampling: Sampling | None = None,
    recursion: Recursion | None = None,
    options: LoadOptions | None = None,
    fmt: ThinkingFormat | None = None,
    retrieval: Retrieval | None = None,
    log: Callable[[str], None] = _stderr,
) -> None:
    """Serve the recursive engine over an OpenAI-compatible API until interrupted.

    ``retrieval.rag``: every request's reasoner gets cited context from the store, and its critic checks each
    round's thinking against passages retrieved for the thinking's claims."""
    settings, sampling, recursion = settings or ServeSettings(), sampling or Sampling(), recursion or Recursion()
    options = options or LoadOptions()
    check_bind(settings.host, settings.api_key)
    check_defaults(settings, sampling, recursion, options)
    require("preflexor-local serve", ("starlette", "uvicorn"), "server")
    import uvicorn

    from ..reasoning.ask import load_roles
    from .app import create_app
    from .worker import Worker

    retrieval = retrieval or Retrieval()
    sock = bind(settings.host, settings.port)  # before loading: a taken port fails in a second, not after a minute
    roles: tuple = ()
    store = None
    try:
        if retrieval.rag:
            from ..rag.evidence import open_rag

            store = open_rag(retrieval.rag)
        roles = load_roles(model, critic, integrator, dataclasses.replace(options, parallel=settings.parallel), grounded=store is not None)
        check_parallel(roles, settings.parallel)
    except BaseException:
        sock.close()
        for backend in {id(b): b for b in roles}.values():
            backend.close()
        if store is not None:
            store.close()
        raise
    worker = Worker(roles, fmt, settings.max_queue, log, parallel=settings.parallel, store=store, retrieval=retrieval)
    try:
        app = create_app(worker, settings, sampling, recursion)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=10)
        server = _server_class()(config, on_exit=worker.stop_all)
        host, port = sock.getsockname()[:2]
        where = f"[{host}]" if ":" in host else host
        log(
            f"serving {roles[0].name} as {settings.model_id!r} on http://{where}:{port}/v1 "
            f"({recursion.rounds} round(s) at most by default, {settings.parallel} at once, {settings.max_queue} may wait"
            f"{f', grounded in {retrieval.rag}' if store is not None else ''}"
            f"{', key required' if settings.api_key else ''}); Ctrl-C stops"
        )
        server.run(sockets=[sock])
    finally:
        worker.close()
        sock.close()
        if store is not None:
            store.close()
    log("stopped")


def check_defaults(settings: ServeSettings, sampling: Sampling, recursion: Recursion, options: LoadOptions) -> None:
    """The server's defaults must be requests it would accept itself."""
    from ..prompt import check_template_option
    from ..reasoning.strategies import check_mode

    if sampling.max_tokens > settings.max_tokens_limit:
        raise UsageError(f"--max-tokens {sampling.max_tokens} is over --max-tokens-limit {settings.max_tokens_limit}")
    for flag, rounds in (
        ("--recursive", recursion.rounds),
        ("--effort-low", settings.effort_low),
        ("--effort-medium", settings.effort_medium),
        ("--effort-high", settings.effort_high),
    ):
        if rounds > settings.max_rounds:
            raise UsageError(f"{flag} {rounds} is over --max-rounds {settings.max_rounds}")
    check_mode(recursion.mode)
    check_template_option(options.chat_template)


def check_parallel(roles, parallel: int) -> None:
    """``--parallel`` above 1 needs every model to take concurrent calls."""
    if parallel <= 1:
        return
    for backend in roles:
        if not backend.concurrent:  # loaded with --parallel slots: llama.cpp batches; a server serves at once
            raise UsageError(
                f"--parallel {parallel} needs GGUF (llama.cpp) or OpenAI-compatible models; {backend.name} runs on {backend.kind}",
                hint="drop --parallel (requests then take turns), or serve a GGUF file",
            )


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (port 0: any free one), or a one-line reason."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
    except OSError as err:
        raise UsageError(f"cannot listen on {host}: {err.strerror or err}", hint="--host takes an address such as 127.0.0.1 or ::1") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.set_inheritable(True)
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror or err}", hint="pick another --port (0 = any free port)") from None
    return sock


def _server_class():
    """Defined on use: uvicorn is imported only once serve() has checked it is installed."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopping our requests first when a signal asks it to stop."""

        def __init__(self, config, on_exit: Callable[[], None]):
            super().__init__(config)
            self._on_exit = on_exit

        def handle_exit(self, sig, frame) -> None:
            self._on_exit()  # open streams end now instead of holding the graceful shutdown until they finish
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its shutdown so the default handler ends the process;
            # serve() frees the models and returns instead, so the command exits 0.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return Server
