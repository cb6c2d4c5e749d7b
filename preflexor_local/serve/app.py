"""The HTTP face: Starlette routes that parse a request, queue it and answer (whole or as SSE).

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/responses``
(responses.py), ``GET /v1/models`` (and ``/v1/models/{id}``), ``GET /health``, and the
playground at ``GET /`` (playground.py). Every error is an OpenAI error object.
No engine logic lives here: the request becomes a ``Job`` (request.py), the
worker runs it (worker.py), and the events become response pieces (stream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..config import Recursion, Sampling
from ..reasoning.engine import Event
from .auth import check_bearer
from .errors import APIError
from .playground import routes as playground_routes
from .request import Job, parse_chat, parse_completion
from .responses import ResponseBuilder, parse_responses, run
from .settings import ServeSettings
from .stream import DONE, KEEPALIVE, ChunkMaker, Translator, empty_answer_note, finish_reason, new_id, sse, usage
from .worker import Failed, Ticket, Worker


def create_app(worker: Worker, settings: ServeSettings, sampling: Sampling | None = None, recursion: Recursion | None = None) -> Starlette:
    """The ASGI app over a running ``Worker``; ``sampling``/``recursion`` are the request defaults."""
    sampling, recursion = sampling or Sampling(), recursion or Recursion()
    started = int(time.time())

    def model_card() -> dict:
        names = {role: b.describe() for role, b in zip(("reasoner", "critic", "integrator"), worker.roles)}
        return {
            "id": settings.model_id,
            "object": "model",
            "created": started,
            "owned_by": "preflexor-local",
            "preflexor": {"models": names, "defaults": {"rounds": recursion.rounds, "mode": recursion.mode}},
        }

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", **worker.health()})

    async def models(request: Request) -> Response:
        check_bearer(request.headers.get("authorization"), settings.api_key)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> Response:
        check_bearer(request.headers.get("authorization"), settings.api_key)
        if request.path_params["name"] != settings.model_id:
            raise APIError(404, f"unknown model {request.path_params['name']!r}", param="model", code="model_not_found")
        return JSONResponse(model_card())

    async def chat(request: Request) -> Response:
        check_bearer(request.headers.get("authorization"), settings.api_key)
        job = parse_chat(await _read_json(request, settings.max_body), settings, sampling, recursion)
        return await _answer(request, job, chat=True)

    async def completions(request: Request) -> Response:
        check_bearer(request.headers.get("authorization"), settings.api_key)
        job = parse_completion(await _read_json(request, settings.max_body), settings, sampling, recursion)
        return await _answer(request, job, chat=False)

    async def responses(request: Request) -> Response:
        check_bearer(request.headers.get("authorization"), settings.api_key)
        body = await _read_json(request, settings.max_body)
        job = parse_responses(body, settings, sampling, recursion)
        await asyncio.to_thread(worker.check_fits, job)
        ticket = worker.submit(job, asyncio.get_running_loop())
        builder = ResponseBuilder(settings.model_id, body)
        if job.stream:
            return StreamingResponse(run(ticket, builder, settings.keepalive), media_type="text/event-stream", headers=_SSE_HEADERS)
        watcher = asyncio.create_task(_cancel_on_disconnect(request, ticket))
        try:
            async for _ in run(ticket, builder, None):  # the same builder as the stream: the whole response cannot differ
                pass
        finally:
            watcher.cancel()
        if builder.error is not None:
            raise builder.error
        return JSONResponse(builder.body)

    async def _answer(request: Request, job: Job, chat: bool) -> Response:
        await asyncio.to_thread(worker.check_fits, job)
        ticket = worker.submit(job, asyncio.get_running_loop())
        if job.stream:
            return StreamingResponse(_stream(ticket, chat), media_type="text/event-stream", headers=_SSE_HEADERS)
        return await _whole(request, ticket, chat)

    async def _stream(ticket: Ticket, chat: bool):
        job = ticket.job
        maker = ChunkMaker(settings.model_id, chat=chat)
        tr = Translator(job.show_reasoning, job.stop)
        try:
            if (first := maker.role()) is not None:
                yield sse(first)
            while True:
                try:
                    item = await asyncio.wait_for(ticket.events.get(), timeout=settings.keepalive)
                except TimeoutError:
                    yield KEEPALIVE  # queued or evaluating a long prompt: keep proxies and clients from timing out
                    continue
                if isinstance(item, Event):
                    for kind, text in tr.feed(item):
                        if (chunk := maker.piece(kind, text)) is not None:
                            yield sse(chunk)
                    continue
                if isinstance(item, Failed):
                    yield sse(item.error.body)  # headers are sent: errors travel in the stream, as OpenAI's do
                    yield DONE
                    return
                t = item.transcript
                for kind, text in tr.finish(t):
                    if (chunk := maker.piece(kind, text)) is not None:
                        yield sse(chunk)
                extra = {"preflexor": {"transcript": t.to_dict()}} if job.transcript else None
                yield sse(maker.end(finish_reason(t, tr.stopped), extra))
                if job.include_usage:
                    yield sse(maker.usage(t))
                yield DONE
                return
        finally:
            ticket.cancel()  # the client left (or we are done: then a no-op); stops generation at the next token

    async def _whole(request: Request, ticket: Ticket, chat: bool) -> Response:
        job = ticket.job
        watcher = asyncio.create_task(_cancel_on_disconnect(request, ticket))
        tr = Translator(job.show_reasoning)  # for the reasoning text; the answer is the transcript's
        try:
            while True:
                item = await ticket.events.get()
                if isinstance(item, Event):
                    tr.feed(item)
                    continue
                if isinstance(item, Failed):
                    raise item.error
                transcript = item.transcript
                break
        finally:
            watcher.cancel()
            ticket.cancel()
        content, stopped = _cut(transcript.final_answer, job.stop)
        reason = finish_reason(transcript, stopped)
        reasoning = tr.reasoning_text if job.show_reasoning else None
        if not content and (note := empty_answer_note(transcript)):
            reasoning = (reasoning + "\n\n" if reasoning else "") + note  # never an empty success without a word why
        if chat:
            message = {"role": "assistant", "content": content}
            if reasoning is not None:
                message["reasoning_content"] = message["reasoning"] = reasoning
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            body = {"id": new_id("chatcmpl"), "object": "chat.completion"}
        else:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": reason}
            if reasoning is not None:
                choice["reasoning_content"] = reasoning
            body = {"id": new_id("cmpl"), "object": "text_completion"}
        body.update(created=int(time.time()), model=settings.model_id, choices=[choice], usage=usage(transcript))
        if job.transcript:
            body["preflexor"] = {"transcript": transcript.to_dict()}
        return JSONResponse(body)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        *playground_routes(settings, sampling, recursion),
    ]
    handlers = {APIError: _api_error, HTTPException: _http_error, Exception: _internal_error}
    return Starlette(routes=routes, exception_handlers=handlers)


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not buffer the stream


async def _read_json(request: Request, cap: int):
    """The body as JSON, refusing more than ``cap`` bytes before reading them all."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise APIError(413, f"the request body is {length} bytes; this server accepts at most {cap} (--max-body)", code="body_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > cap:
            raise APIError(413, f"the request body is over {cap} bytes (--max-body)", code="body_too_large")
    try:
        return json.loads(bytes(data))
    except (ValueError, RecursionError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from None


async def _cancel_on_disconnect(request: Request, ticket: Ticket) -> None:
    """A client that hangs up on a whole (non-streamed) answer stops its generation too."""
    with contextlib.suppress(Exception):
        while (await request.receive())["type"] != "http.disconnect":
            pass
        ticket.cancel()


def _cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    return (text[: min(hits)].rstrip(), True) if hits else (text, False)


async def _api_error(request: Request, err: APIError) -> Response:
    return JSONResponse(err.body, status_code=err.status, headers=err.headers)


async def _http_error(request: Request, err: HTTPException) -> Response:
    what = "no such endpoint" if err.status_code == 404 else err.detail
    return JSONResponse(
        APIError(err.status_code, f"{what}: {request.method} {request.url.path}").body, status_code=err.status_code, headers=getattr(err, "headers", None)
    )


async def _internal_error(request: Request, err: Exception) -> Response:
    return JSONResponse(APIError(500, f"internal error ({type(err).__name__}); see the server log", code="internal_error").body, status_code=500)
