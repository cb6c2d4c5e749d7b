"""Start a ``preflexor-local serve`` for a benchmark and wait until it answers (shared by the bench scripts)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx


def wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Wait for ``url/models`` to answer 200; exit with the log's tail if the server dies or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit(f"server did not come up:\n{log.read_text()[-2000:]}")


def start_serve(args: list[str], log: Path, timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """``preflexor-local serve --port 0 ARGS`` with output to ``log``; (process, base URL ending in /v1) once it answers."""
    exe = Path(sys.executable).with_name("preflexor-local")
    proc = subprocess.Popen([str(exe), "serve", "--port", "0", *args], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not (m := re.search(r" on (http://\S+/v1) ", log.read_text())):  # the port it bound, from its start-up line
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"preflexor-local serve did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    wait_up(m.group(1), proc, log, timeout)
    return proc, m.group(1)
