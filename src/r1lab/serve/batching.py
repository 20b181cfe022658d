"""Concurrent requests, batched through one rollout engine.

The model lives in one background thread. Requests arrive on the server's event loop as
`Job`s; the worker takes the first waiting one, collects whatever else arrives within
`window_s` (up to `max_rows` choices), and runs them as engine calls: one per group of jobs
that sample alike (same n, temperature, top-p, top-k). What may differ inside a group is
handled per row while the engine decodes (`on_token`): each job's own `max_tokens` and stop
strings end its rows, and each prompt draws from its own seeded generator
(`SamplingParams.seeds`), so a request with a `seed` gets the same text whichever requests
share its batch (on the lean decode path; the generic one keeps finished rows in the batch
for a while, which can shift later draws of a prompt with n > 1).

Each token becomes text, stop-string handling and the reasoning/answer split in the worker
thread (`serve.stream`), and the pieces go to the job's asyncio queue as events:
`("delta", choice, part, text)`, `("done", choice, finish_reason, tokens, stop string or
None)`, `("error", message)` and finally `("end",)`. A job whose client went away is marked
`cancelled`: its rows end at their next token, and a job still waiting never reaches the
engine.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from r1lab.rollout.base import Generation, SamplingParams
from r1lab.serve.protocol import Sampling
from r1lab.serve.stream import ReasoningSplit, StopCut, TokenText
from r1lab.text.formats import OutputFormat
from r1lab.text.templates import Prompt

log = logging.getLogger("r1lab.serve")
TEXT = "text"  # the part of a completion (no reasoning split)


@dataclass
class _Choice:
    """One row's text state (worker thread only)."""

    text: TokenText
    cut: StopCut
    split: ReasoningSplit | None
    tokens: int = 0
    finish: str | None = None


@dataclass
class Job:
    """One prompt's choices for one request; `split` (an output format) for chat responses."""

    prompt: Prompt
    sampling: Sampling
    events: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    tokenizer: Any
    eos_ids: frozenset[int]
    split: OutputFormat | None = None
    offset: int = 0  # index of this job's first choice in the request's response
    prompt_tokens: int = 0
    on_end: Callable[[], None] | None = None  # run on the event loop once the job has ended
    cancelled: bool = False
    seed: int = field(default_factory=lambda: random.getrandbits(63))
    choices: list[_Choice] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.sampling.seed is not None:
            self.seed = self.sampling.seed & ((1 << 63) - 1)
        for _ in range(self.sampling.n):
            split = ReasoningSplit(self.split, self.prompt.prefill) if self.split else None
            self.choices.append(
                _Choice(TokenText(self.tokenizer), StopCut(self.sampling.stop), split)
            )

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the server's loop is closed: nobody is listening any more
            self.cancelled = True

    def post(self, *event: Any) -> None:
        self._call(self.events.put_nowait, event)

    def end(self) -> None:
        """The last event of the job; nothing of it is in the engine any more."""
        self.post("end")
        if self.on_end is not None:
            self._call(self.on_end)

    def _send(self, index: int, choice: _Choice, text: str) -> None:
        pieces = choice.split.push(text) if choice.split else [(TEXT, text)] if text else []
        for part, piece in pieces:
            self.post("delta", self.offset + index, part, piece)

    def on_token(self, index: int, token: int) -> bool:
        """The engine sampled `token` for choice `index`; True ends that row."""
        if self.cancelled:
            return True
        choice = self.choices[index]
        if choice.finish is not None:
            return True
        choice.tokens += 1
        self._send(index, choice, choice.cut.push(choice.text.push(token)))
        if token in self.eos_ids or choice.cut.stopped:
            choice.finish = "stop"
        elif choice.tokens >= self.sampling.max_tokens:
            choice.finish = "length"
        return choice.finish is not None

    def finish(self, generations: Sequence[Generation]) -> None:
        """The engine call returned: flush each choice and say why it ended."""
        for index, (choice, gen) in enumerate(zip(self.choices, generations, strict=True)):
            if not self.cancelled:
                self._send(index, choice, choice.cut.push(choice.text.flush()) + choice.cut.flush())
                for part, piece in choice.split.flush() if choice.split else []:
                    self.post("delta", self.offset + index, part, piece)
            reason = choice.finish or ("stop" if gen.finished else "length")
            self.post("done", self.offset + index, reason, choice.tokens, choice.cut.matched)
        self.end()


class Batcher:
    """The worker thread that owns the engine (see the module docstring)."""

    def __init__(self, engine: Any, window_s: float = 0.005, max_rows: int = 32) -> None:
        self.engine, self.window_s, self.max_rows = engine, window_s, max_rows
        self.waiting: queue.Queue[Job | None] = queue.Queue()
        self.calls = 0  # engine calls made, and the rows they carried (batching at work)
        self.rows = 0
        self.thread = threading.Thread(target=self._work, name="r1lab-batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.waiting.put(None)
        self.thread.join(timeout=60)

    def submit(self, job: Job) -> None:
        self.waiting.put(job)

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """`first` and what arrives within the window; True when asked to stop."""
        jobs, rows = [first], first.sampling.n
        deadline = time.monotonic() + self.window_s
        while rows < self.max_rows and (left := deadline - time.monotonic()) > 0:
            try:
                job = self.waiting.get(timeout=left)
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            rows += job.sampling.n
        return jobs, False

    def _work(self) -> None:
        while (first := self.waiting.get()) is not None:
            jobs, stopping = self._collect(first)
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                s = job.sampling
                groups.setdefault((s.n, s.temperature, s.top_p, s.top_k), []).append(job)
            for group in groups.values():
                self._run(group)
            if stopping:
                return

    def _run(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.cancelled:  # its client left while it waited
                job.end()
        live = [job for job in jobs if not job.cancelled]
        if not live:
            return
        s = live[0].sampling
        params = SamplingParams(
            n=s.n,
            max_new_tokens=max(job.sampling.max_tokens for job in live),
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            seeds=tuple(job.seed for job in live),
        )

        def on_token(row: int, token: int) -> bool:
            return live[row // s.n].on_token(row % s.n, token)

        self.calls, self.rows = self.calls + 1, self.rows + len(live) * s.n
        try:
            groups = self.engine.generate([job.prompt for job in live], params, on_token=on_token)
        except Exception as err:  # the server must go on answering: the requests get a 500
            log.exception("engine call failed")
            for job in live:
                job.post("error", f"generation failed: {type(err).__name__}: {err}")
                job.end()
            return
        for job, generations in zip(live, groups, strict=True):
            job.finish(generations)
