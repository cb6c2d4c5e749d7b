"""The test suite's one scripted model: ``reply(request) -> str`` streamed through the backends' own stop scanner.

Only the text generation is replaced; the engine, eval, judge and pair generation around it are the real code, so
token counts, verdicts and stops are exact and the assertions can be exact too.
"""

from __future__ import annotations

import threading

from preflexor_local.backends.base import Backend, Generation, request_scanner


def words(text: str) -> int:
    return len(text.split())


class Scripted(Backend):
    """Replies with ``reply(request)``, a few characters at a time, stopped where a real backend would stop.

    ``tokens(text)`` counts a reply's tokens (default: one per word); ``finish(text)`` overrides the finish reason
    of a reply the script ended itself (e.g. ``length`` to act a token limit). Every request is kept, in order.
    """

    kind = "scripted"
    template = None  # not a base model: no one-shot examples in the prompts

    def __init__(self, reply, name: str = "scripted", *, tokens=words, finish=None, chunk: int = 3):
        super().__init__(name)
        self.reply, self.tokens, self.finish, self.chunk = reply, tokens, finish, chunk
        self.requests: list = []
        self._lock = threading.Lock()  # eval runs items on threads

    @property
    def prompts(self) -> list[str]:
        """The last user message of every request."""
        return [r.messages[-1]["content"] for r in self.requests]

    def stream(self, request):
        with self._lock:
            self.requests.append(request)
        scanner, text = request_scanner(request, (), request.prefill), self.reply(request)
        for i in range(0, len(text), self.chunk):
            if shown := scanner.push(text[i : i + self.chunk]):
                yield shown
            if scanner.matched is not None:
                break
        else:
            if tail := scanner.flush():
                yield tail
        if scanner.matched is None:
            finish = self.finish(scanner.text) if self.finish else "eos"
        else:
            finish = "restart" if scanner.restarted else "stop"
        yield Generation(text=scanner.text, finish_reason=finish, prompt_tokens=5, completion_tokens=self.tokens(scanner.text), seconds=0.001)
