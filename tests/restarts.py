"""A stop of ``stops_after`` checked on a real backend: the same request with and without it, greedy."""

from __future__ import annotations

import dataclasses

from preflexor_local.backends import GenerationRequest


def repeated_piece(text: str) -> tuple[str, int]:
    """The longest (4 to 2 characters), then first, piece of ``text`` that occurs again after itself, and where it
    occurs the second time."""
    for size in (4, 3, 2):
        for p in range(len(text) - size):
            piece = text[p : p + size]
            second = text.find(piece, text.find(piece) + size)
            if second >= 0:
                return piece, second
    raise AssertionError(f"no piece repeats in {text!r}: raise max_tokens")


def check_restart_stop(backend, request: GenerationRequest) -> None:
    chunks: list[str] = []
    free = backend.generate(request)
    piece, second = repeated_piece(free.text)
    stopped = backend.generate(dataclasses.replace(request, stops_after=((piece, piece),)), on_text=chunks.append)
    assert stopped.text == free.text[:second] == "".join(chunks)  # the second one is never shown, not even in part
    assert stopped.finish_reason == "restart" and stopped.stop == piece
    assert stopped.completion_tokens < free.completion_tokens
    # with repeats allowed (--no-stop-repeats) it is not applied either
    off = dataclasses.replace(request, stops_after=((piece, piece),), sampling=dataclasses.replace(request.sampling, stop_repeats=False))
    assert backend.generate(off).text == free.text
