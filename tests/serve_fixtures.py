"""The real `preflexor-local serve` as a subprocess on a free loopback port (port 0; the chosen one is read from its log)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).with_name("preflexor-local")


@dataclass
class Server:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT/v1
    log_path: Path

    @property
    def base(self) -> str:
        return self.url.removesuffix("/v1")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        return httpx.get(self.base + "/health", timeout=5).json()

    def wait_idle(self, timeout: float) -> float:
        """Seconds until nothing runs or waits (fails the test after ``timeout``)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            h = self.health()
            if not h["busy"] and not h["waiting"]:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise AssertionError(f"server still busy after {timeout} s: {self.health()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def server_env(home: Path) -> dict:
    env = dict(os.environ)
    env.update(PREFLEXOR_HOME=str(home), HF_HUB_OFFLINE="1", NO_COLOR="1")
    for key in ("PREFLEXOR_DEBUG", "PREFLEXOR_API_KEY", "OPENAI_API_KEY"):
        env.pop(key, None)
    return env


def start_server(args: list[str], workdir: Path, env: dict, timeout: float = 120) -> Server:
    log_path = workdir / "serve.log"
    log = open(log_path, "w")  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen([str(BIN), "serve", "--port", "0", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if m := re.search(r" on (http://\S+/v1) ", text):
            server = Server(proc, m.group(1), log_path)
            while time.monotonic() < deadline:
                try:
                    if httpx.get(server.base + "/health", timeout=1).status_code == 200:
                        return server
                except httpx.HTTPError:
                    time.sleep(0.1)
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"serve did not come up in {timeout} s:\n{log_path.read_text()[-3000:]}")


def sse_events(lines) -> list[tuple[str, str]]:
    """Raw SSE lines -> [("comment", text) | ("data", payload)], one per event, in order."""
    out, data = [], []
    for line in lines:
        if line == "":
            if data:
                out.append(("data", "\n".join(data)))
                data = []
        elif line.startswith(":"):
            out.append(("comment", line[1:].strip()))
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        out.append(("data", "\n".join(data)))
    return out
