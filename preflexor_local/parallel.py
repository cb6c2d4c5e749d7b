"""The one small parallel runner: data generation's pairs and eval's items, a few at a time on threads.

``unordered(next_task, workers)`` keeps at most ``workers`` tasks running and yields each result, in the calling
thread, as soon as it is done. ``next_task(running)`` is asked for the next task whenever a thread is free; it returns
``None`` when none should start now (the caller's budget is spent, or the work is done), and the run ends once nothing
is running. An error stops new launches; the results of the tasks still running are yielded, then the error is
raised. Threads are daemons: Ctrl-C ends the run without waiting for calls in flight.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def unordered(next_task: Callable[[int], Callable[[], T] | None], workers: int) -> Iterator[T]:
    results: queue.Queue = queue.Queue()

    def launch(task: Callable[[], T]) -> None:
        def body() -> None:
            try:
                results.put((True, task()))
            except BaseException as err:  # handed to the calling thread
                results.put((False, err))

        threading.Thread(target=body, daemon=True).start()

    running, error = 0, None
    while True:
        while error is None and running < workers and (task := next_task(running)) is not None:
            launch(task)
            running += 1
        if running == 0:
            break
        ok, value = results.get()
        running -= 1
        if ok:
            yield value
        else:
            error = error or value
    if error is not None:
        raise error
