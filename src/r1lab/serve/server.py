"""`r1lab serve`: load a model, put a batcher in front of its engine, serve it over HTTP.

The server listens on 127.0.0.1 unless told otherwise (`--host`); `--port 0` picks a free
port, and the line announcing the URL names the one chosen (what the tests and the load test
read). The API key, when there is one, comes from the environment (`--api-key-env`, default
`R1LAB_API_KEY`), never from the command line, where other users of the machine could read it.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from r1lab.core.config import at_least, choice
from r1lab.core.errors import UserError
from r1lab.core.models import DTYPES, check_device, endpoint_parts
from r1lab.serve.batching import Batcher
from r1lab.serve.prompts import ChatPrompts, check_serve_template
from r1lab.serve.protocol import ServeLimits
from r1lab.text.formats import SPECIAL_TOKEN, OutputFormat, check_style

STREAMING_ENGINES = ("prefix", "hf")  # the engines that report tokens as they are sampled


@dataclass(frozen=True)
class ServeConfig:
    """How `r1lab serve` runs (its command-line flags)."""

    spec: str
    name: str | None = None  # the model name clients send; default: the spec itself
    host: str = "127.0.0.1"
    port: int = 8000
    template: str = "model"
    prefill: str = ""
    style: str = "think"
    special_token: str = SPECIAL_TOKEN
    engine: str = "prefix"
    dtype: str = "float32"
    compute_dtype: str = "float32"
    device: str = "auto"
    limits: ServeLimits = field(default_factory=ServeLimits)
    api_key_env: str = "R1LAB_API_KEY"
    window_ms: float = 5.0  # how long the batcher waits for more requests to join a batch
    max_batch: int = 32  # choices per engine call
    threads: int | None = None  # torch's intra-op threads (None: torch's default)

    def validate(self) -> None:
        if endpoint_parts(self.spec):
            raise UserError(
                f"{self.spec} is a model behind an endpoint already: name a local model here"
            )
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be in [0, 65535] (0: a free one), got {self.port}")
        check_serve_template(self.template)
        check_style(self.style, self.special_token)
        choice("--engine", self.engine, STREAMING_ENGINES)
        choice("--dtype", self.dtype, DTYPES)
        choice("--compute-dtype", self.compute_dtype, DTYPES)
        check_device("--device", self.device)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise UserError(
                f"--api-key-env must name an environment variable, got {self.api_key_env!r}"
            )
        if self.window_ms < 0:
            raise UserError(f"--batch-window-ms must be >= 0, got {self.window_ms}")
        at_least("--max-batch", self.max_batch, 1)
        if self.threads is not None:
            at_least("--threads", self.threads, 1)
        self.limits.validate()


def build_served(config: ServeConfig) -> Any:
    """Load the model and everything the routes need (`app.Served`; the batcher starts with
    the app)."""
    from r1lab.core.models import load_model, pick_device
    from r1lab.rollout import make_engine
    from r1lab.rollout.base import eos_token_ids
    from r1lab.serve.app import Served

    config.validate()
    if config.threads is not None:  # on a shared CPU, fewer threads than cores can be faster
        import torch

        torch.set_num_threads(config.threads)
    model, tokenizer = load_model(config.spec, config.dtype)
    model.to(pick_device(config.device))
    engine = make_engine(
        config.engine,
        model,
        tokenizer,
        max_prompt_tokens=config.limits.max_prompt_tokens,
        compute_dtype=config.compute_dtype,
    )
    return Served(
        name=config.name or config.spec,
        tokenizer=tokenizer,
        prompts=ChatPrompts(tokenizer, config.template, config.prefill),
        fmt=OutputFormat(config.style, config.special_token),
        limits=config.limits,
        batcher=Batcher(engine, config.window_ms / 1000, config.max_batch),
        eos_ids=frozenset(eos_token_ids(model, tokenizer)),
        api_key=os.environ.get(config.api_key_env) or None,
    )


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port); port 0 takes a free one (read it back from the socket)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    return sock


def serve(config: ServeConfig, announce: Callable[[str], Any] = print) -> None:
    """Serve until interrupted; `announce` gets one line with the URL once the model is loaded."""
    try:
        import uvicorn

        from r1lab.serve.app import create_app
    except ImportError:
        raise UserError(
            "r1lab serve needs FastAPI and uvicorn: pip install 'r1lab[serve]'"
        ) from None
    served = build_served(config)
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    key = f", API key from ${config.api_key_env}" if served.api_key else ""
    announce(f"serving {served.name!r} at http://{shown}:{port}/v1{key}")
    settings = uvicorn.Config(create_app(served), log_level="warning", timeout_graceful_shutdown=5)
    uvicorn.Server(settings).run(sockets=[sock])
