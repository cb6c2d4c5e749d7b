"""OpenAI-compatible HTTP backend: vLLM, llama-server, Ollama, mlx_lm.server, llama-cpp-python's server.

This is how a user goes past one machine. Prefill needs the server to continue
the assistant's text, and servers differ, so there are two modes:

* ``completions``: we render the prompt ourselves (``render_prompt``) and send
  it to ``/v1/completions`` — exact prefill, any server. Used when the chat
  template is known: given with ``--chat-template``, or read from the server
  (llama-server's ``/props``).
* ``chat``: ``/v1/chat/completions`` with the prefill as a trailing assistant
  message, plus ``continue_final_message`` / ``add_generation_prompt: false``
  (vLLM's flags; llama-server and Ollama continue a trailing assistant message
  on their own). Used when the template is unknown.

Spec: ``http://host:port/v1`` (the server's first model) or ``…/v1#model-name``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

from ..config import LoadOptions
from ..errors import ServerError
from ..models import ModelSpec
from ..prompt import ChatTemplate, choose_template, render_prompt
from . import BackendEntry
from .base import LOOP_CHECK_EVERY, Backend, Generation, GenerationRequest, repeats_at_end, request_scanner


def _note(text: str) -> None:
    """One dim line on stderr: something the user should know that is not an error."""
    import sys

    dim = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    print(f"\x1b[2mnote: {text}\x1b[0m" if dim else f"note: {text}", file=sys.stderr, flush=True)


def _claims(spec: ModelSpec) -> int:
    return 10 if spec.kind == "url" else 0


ENTRY = BackendEntry(
    name="openai",
    summary="any OpenAI-compatible server (vLLM, llama-server, Ollama, mlx_lm.server)",
    claims=_claims,
    loader="preflexor_local.backends.openai:load",
    requires=("httpx",),
)


class OpenAIBackend(Backend):
    kind = "openai"
    concurrent = True  # the server serves calls at once

    def __init__(self, spec: ModelSpec, options: LoadOptions):
        import httpx

        self.url = spec.url
        key = options.api_key or os.environ.get("OPENAI_API_KEY") or "none"
        self.client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(options.timeout, connect=10.0),
        )
        served = self._served_models()
        if spec.name and served and spec.name not in served:
            raise ServerError(f"{self.url} does not serve a model named {spec.name!r}", hint=f"it serves: {', '.join(map(str, served))}")
        # Unnamed and unlisted: send no model name, so the server uses its own
        # (mlx_lm.server would try to load a model called "default").
        self.model_id = spec.name or (served[0] if served else None)
        if served is None:
            _note(
                f"{self.url}/models did not list the models; using "
                + (repr(self.model_id) if self.model_id else "the server's default model")
                + ("" if spec.name else " (name one with …/v1#model-name)")
            )
        super().__init__(self.model_id or "default")
        self.template: ChatTemplate | None = None
        if options.chat_template and options.chat_template != "auto":
            self.template = choose_template(options.chat_template, None, None, instruct=True)
        else:
            server_template = self._server_template()
            if server_template:
                self.template = choose_template(None, server_template, None, instruct=True)
        self.mode = "completions" if self.template else "chat"

    # -- HTTP helpers ------------------------------------------------------
    def _fail(self, err: Exception) -> ServerError:
        import httpx

        if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout):
            return ServerError(
                f"cannot reach the server at {self.url} ({type(err).__name__})",
                hint="start it (e.g. `python -m llama_cpp.server --model m.gguf --port 8080`) or check the URL and port",
            )
        if isinstance(err, httpx.TimeoutException):
            return ServerError(f"the server at {self.url} did not answer in time", hint="raise --timeout, or check the server's load")
        return ServerError(f"request to {self.url} failed: {err}")

    def _get_json(self, path: str) -> dict:
        import httpx

        try:
            resp = self.client.get(path)
        except httpx.HTTPError as err:
            raise self._fail(err) from None
        if resp.status_code >= 400:
            raise ServerError(f"{self.url}{path} answered HTTP {resp.status_code}", hint="is this an OpenAI-compatible /v1 URL?")
        try:
            return resp.json()
        except ValueError:
            raise ServerError(f"{self.url}{path} did not answer with JSON", hint="is this an OpenAI-compatible /v1 URL?") from None

    def _served_models(self) -> list[str] | None:
        """The ids ``/models`` lists, or None when listing fails on a server that is up.

        Listing is a convenience: mlx_lm.server drops the connection on ``/v1/models``
        when it has no Hugging Face cache folder, yet serves completions. Only an
        unreachable server is an error here.
        """
        import httpx

        try:
            resp = self.client.get("/models", timeout=10.0)
            resp.raise_for_status()
            return [str(m.get("id")) for m in resp.json().get("data", [])]
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise self._fail(err) from None
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            return None

    def _server_template(self) -> str | None:
        """llama-server publishes its chat template at /props (beside /v1)."""
        import httpx

        root = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        try:
            resp = self.client.get(root + "/props", timeout=5.0)
            return resp.json().get("chat_template") if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None

    # -- generation ---------------------------------------------------------
    def _payload(self, request: GenerationRequest) -> tuple[str, dict]:
        s = request.sampling
        body = {
            **({"model": self.model_id} if self.model_id else {}),
            "max_tokens": request.limit,
            "temperature": max(s.temperature, 0.0),
            "top_p": s.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        stops = list(dict.fromkeys([*request.stop, *(self.template.stop if self.template else ())]))
        if stops:
            body["stop"] = stops[:4]  # the OpenAI API allows four; the rest are cut here, locally
        if s.seed is not None:
            body["seed"] = s.seed
        # llama.cpp's extensions (vLLM and Ollama read most of them; ours, in serve, all), sent even when they are
        # off: a server fills an absent one with its own default (llama-server's top_k 40, serve's DRY 0.8), so
        # `--dry-multiplier 0` or `--top-k 0` would otherwise quietly mean the server's choice.
        body.update(top_k=s.top_k, min_p=s.min_p, repeat_penalty=s.repeat_penalty, repetition_penalty=s.repeat_penalty)
        body.update(dry_multiplier=s.dry_multiplier, dry_base=s.dry_base, dry_allowed_length=s.dry_allowed_length)
        if self.mode == "completions":
            body["prompt"] = render_prompt(self.template, request.messages, request.prefill)
            return "/completions", body
        messages = [{"role": m["role"], "content": m["content"]} for m in request.messages]
        if request.prefill:
            messages.append({"role": "assistant", "content": request.prefill})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        body["messages"] = messages
        return "/chat/completions", body

    def stream(self, request: GenerationRequest) -> Iterator[str | Generation]:
        import httpx

        path, body = self._payload(request)
        context = body.get("prompt") or request.prefill
        scanner = request_scanner(request, self.template.stop if self.template else (), context)
        t0 = time.perf_counter()
        ttft, chunks, usage, finish = None, 0, {}, "length"
        try:
            with self.client.stream("POST", path, json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    detail = resp.text[:300].replace("\n", " ")
                    raise ServerError(f"{self.url}{path} answered HTTP {resp.status_code}: {detail}")
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        text = choice.get("text") if self.mode == "completions" else (choice.get("delta") or {}).get("content")
                        if text:
                            if ttft is None:
                                ttft = time.perf_counter() - t0
                            chunks += 1
                            safe = scanner.push(text)
                            if safe:
                                yield safe
                        if choice.get("finish_reason"):
                            # "stop" covers both an end-of-turn token and a stop string the server matched
                            finish = choice["finish_reason"]
                    if scanner.matched is not None:
                        break
                    if request.sampling.stop_repeats and chunks % LOOP_CHECK_EVERY == 0 and repeats_at_end(scanner.text):
                        finish = "loop"
                        break
        except httpx.HTTPError as err:
            raise self._fail(err) from None
        if scanner.matched is None:
            tail = scanner.flush()
            if tail:
                yield tail
        else:
            finish = "restart" if scanner.restarted else "stop"
        yield Generation(
            text=scanner.text,
            finish_reason=finish,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or chunks),
            seconds=time.perf_counter() - t0,
            ttft=ttft,
            stop=scanner.matched,
        )

    def describe(self) -> dict:
        return {**super().describe(), "url": self.url, "mode": self.mode, "template": self.template.name if self.template else None}

    def close(self) -> None:
        self.client.close()


def load(spec: ModelSpec, options: LoadOptions) -> OpenAIBackend:
    return OpenAIBackend(spec, options)
