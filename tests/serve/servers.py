"""Servers for the tests, on 127.0.0.1 only, each started and stopped by its owner.

- `start_live()`: a real `r1lab serve tiny:llama --port 0` process (the free port is read
  from the line it prints), with an API key (the `live` fixture of conftest.py);
- `running(served)`: an app with a scripted engine in a thread of this process, for the
  behaviours a random model cannot show (reasoning, slow or blocked generation).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from r1lab.rollout.base import Generation
from r1lab.serve.app import Served, create_app
from r1lab.serve.batching import Batcher
from r1lab.serve.prompts import ChatPrompts
from r1lab.serve.protocol import ServeLimits
from r1lab.serve.server import bind
from r1lab.text.formats import THINK

KEY = "test-key-123"
MODEL = "tiny:llama"


@dataclass
class Live:
    url: str  # the API base, http://127.0.0.1:PORT/v1
    process: subprocess.Popen

    def health(self) -> dict:
        return httpx.get(self.url.removesuffix("/v1") + "/health", timeout=10).json()


def wait_until(check, seconds: float, what: str) -> None:
    """Poll `check` (bounded), failing the test with `what` when it never holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {seconds} s waiting for {what}")


@contextmanager
def start_live() -> Iterator[Live]:
    env = {**os.environ, "R1LAB_API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "r1lab",
        "serve",
        MODEL,
        "--port",
        "0",
        "--max-tokens",
        "64",
        "--max-concurrent",
        "16",
        "--max-body-bytes",
        "20000",
        "--max-prompt-tokens",
        "512",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        line = process.stdout.readline()  # the server prints its URL once the model is loaded
        found = re.search(r"http://127\.0\.0\.1:\d+/v1", line)
        if not found:
            pytest.fail(f"r1lab serve did not start: {line!r} {process.stderr.read()[-2000:]}")
        server = Live(found.group(0), process)

        def healthy() -> bool:
            try:
                return server.health()["status"] == "ok"
            except httpx.TransportError:
                return False

        wait_until(healthy, 60, "the server's health route")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


class ScriptedEngine:
    """Answers every prompt with the same text, token by token, reporting each to
    `on_token`; `gate` (when given) holds each call until it is set, `delay` paces tokens."""

    def __init__(
        self, tokenizer, text: str, gate: threading.Event | None = None, delay: float = 0.0
    ) -> None:
        self.tokenizer, self.gate, self.delay = tokenizer, gate, delay
        self.ids = tokenizer(text, add_special_tokens=False).input_ids
        self.calls: list[int] = []  # rows per engine call
        self.ended_early: list[int] = []  # tokens a row had when its callback ended it

    def generate(self, prompts, params, on_token=None):
        self.calls.append(len(prompts) * params.n)
        if self.gate is not None:
            self.gate.wait(30)
        groups = []
        for p in range(len(prompts)):
            group = []
            for j in range(params.n):
                taken = []
                for token in self.ids[: params.max_new_tokens]:
                    taken.append(token)
                    time.sleep(self.delay)
                    if on_token is not None and on_token(p * params.n + j, token):
                        if len(taken) < len(self.ids):
                            self.ended_early.append(len(taken))
                        break
                text = self.tokenizer.decode(taken, skip_special_tokens=True)
                group.append(Generation([], taken, text, len(taken) == len(self.ids)))
            groups.append(group)
        return groups


def scripted(tokenizer, engine, prefill: str = "", fmt=THINK, **limits) -> Served:
    return Served(
        name="scripted",
        tokenizer=tokenizer,
        prompts=ChatPrompts(tokenizer, prefill=prefill),
        fmt=fmt,
        limits=ServeLimits(**limits),
        batcher=Batcher(engine, window_s=0.005),
        eos_ids=frozenset({tokenizer.eos_token_id}),
    )


@contextmanager
def running(served: Served) -> Iterator[str]:
    """`served` behind uvicorn in a thread on a free loopback port; yields the API base URL."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(served), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "the in-process server")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
