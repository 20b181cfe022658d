"""The HTTP side of `r1lab serve`: OpenAI's routes over a `Batcher`, in FastAPI.

Routes: `GET /health` (no key needed), `GET /v1/models`, `POST /v1/chat/completions` and
`POST /v1/completions`, each streamed over server-sent events when `stream` is true. Chat
responses carry the chain of thought in `reasoning_content` beside the answer in `content`
(DeepSeek's shape), streamed as it is generated; completions return the raw text. Every
refusal is the API's error object with its 4xx status: malformed JSON or fields (400), a
missing or wrong key (401), an unknown model name (404), a body over the size limit (413),
more requests in flight than allowed (429). A client that goes away mid-request (a closed
stream, or a dropped connection while waiting for a whole response) has its rows ended at
their next token, so it holds the engine no longer.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from r1lab.serve.batching import TEXT, Batcher, Job
from r1lab.serve.prompts import ChatPrompts
from r1lab.serve.protocol import (
    GenRequest,
    RequestError,
    ServeLimits,
    envelope,
    new_id,
    parse_chat,
    parse_completion,
    usage,
)
from r1lab.serve.stream import CONTENT, REASONING
from r1lab.text.formats import OutputFormat

WAIT_S = 0.5  # how often a non-streamed request checks that its client is still there


@dataclass
class Served:
    """Everything the routes need: the model's name and tokenizer, how prompts are rendered
    and responses split, the limits, the key, and the batcher that owns the engine."""

    name: str
    tokenizer: Any
    prompts: ChatPrompts
    fmt: OutputFormat
    limits: ServeLimits
    batcher: Batcher
    eos_ids: frozenset[int]
    api_key: str | None = None
    in_flight: int = 0


def create_app(served: Served) -> FastAPI:
    """The FastAPI application (the batcher is started and stopped by its lifespan)."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        served.batcher.start()
        yield
        served.batcher.stop()

    app = FastAPI(title="r1lab serve", lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError) -> Any:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> Any:
        message = f"{request.method} {request.url.path}: {err.detail}"
        return JSONResponse(RequestError(message, status=err.status_code).body(), err.status_code)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        b = served.batcher
        return {
            "status": "ok",
            "model": served.name,
            "in_flight": served.in_flight,
            "engine_calls": b.calls,
            "engine_rows": b.rows,
        }

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _authorize(served, request)
        card = {"id": served.name, "object": "model", "created": 0, "owned_by": "r1lab"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await _generate(served, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await _generate(served, request, chat=False)

    return app


async def _generate(served: Served, request: Request, chat: bool) -> Any:
    """One chat or completion request: checked, admitted, queued, answered."""
    _authorize(served, request)
    body = await _read_json(request, served.limits.max_body_bytes)
    req = (parse_chat if chat else parse_completion)(body, served.limits)
    if req.model != served.name:
        raise RequestError(
            f"the model {req.model!r} does not exist; this server serves {served.name!r}",
            "model",
            404,
            "model_not_found",
        )
    jobs = _jobs(served, req, chat)
    if served.in_flight >= served.limits.max_concurrent:
        raise RequestError(
            f"too many requests in flight (at most {served.limits.max_concurrent}); retry shortly",
            None,
            429,
            "rate_limit_exceeded",
            "rate_limit_error",
        )
    served.in_flight += 1
    for job in jobs:
        served.batcher.submit(job)
    if req.stream:
        return StreamingResponse(_chunks(served, req, jobs, chat), media_type="text/event-stream")
    return await _whole(request, req, jobs, chat, served)


def _authorize(served: Served, request: Any) -> None:
    if served.api_key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), served.api_key.encode()):
        raise RequestError(
            "incorrect or missing API key: send it as `Authorization: Bearer KEY`",
            None,
            401,
            "invalid_api_key",
        )


async def _read_json(request: Any, limit: int) -> Any:
    """The body as JSON, read no further than `limit` bytes."""
    declared = request.headers.get("content-length", "")
    too_big = RequestError(f"the request body is larger than {limit} bytes", None, 413)
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    data = b""
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise too_big
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the request body is not valid JSON") from None


def _jobs(served: Served, req: GenRequest, chat: bool) -> list[Job]:
    """One job per prompt, its prompt within the limit, all posting to one queue."""
    if chat:
        prompts = [served.prompts.render(req.messages)]
    else:
        prompts = [served.prompts.raw(text) for text in req.prompts]
    events: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    ended = []

    def on_end() -> None:  # the request leaves the in-flight count when its last job ends
        ended.append(True)
        if len(ended) == len(jobs):
            served.in_flight -= 1

    jobs: list[Job] = []
    for i, prompt in enumerate(prompts):
        count = served.prompts.count(prompt)
        if count > served.limits.max_prompt_tokens:
            raise RequestError(
                f"the prompt is {count} tokens, more than this server allows "
                f"({served.limits.max_prompt_tokens})",
                "messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        split = served.fmt if chat else None
        jobs.append(
            Job(
                prompt,
                req.sampling,
                events,
                loop,
                served.tokenizer,
                served.eos_ids,
                split,
                offset=i * req.sampling.n,
                prompt_tokens=count,
                on_end=on_end,
            )
        )
    return jobs


async def _events(jobs: list[Job], request: Any = None) -> AsyncIterator[tuple]:
    """The request's events until every job has ended; with `request`, a client that went
    away is noticed within `WAIT_S` and its jobs cancelled (streams notice by themselves)."""
    open_jobs = len(jobs)
    while open_jobs:
        try:
            event = await asyncio.wait_for(jobs[0].events.get(), WAIT_S if request else None)
        except TimeoutError:
            if await request.is_disconnected():
                for job in jobs:
                    job.cancelled = True
                return
            continue
        if event[0] == "end":
            open_jobs -= 1
        else:
            yield event


def _error(event: tuple) -> RequestError:
    return RequestError(event[1], None, 500, "server_error", "server_error")


def _choice(
    chat: bool, index: int, fields: dict, stream: bool, finish: tuple | None = None
) -> dict[str, Any]:
    """One choice: a chat `message` (or `delta` when streamed) or a completion's `text`; with
    `finish` = (finish_reason, stop string or None), its end (`stop_reason` as vLLM has it)."""
    choice: dict[str, Any] = {"index": index}
    if chat:
        choice["delta" if stream else "message"] = fields
    else:
        choice["text"] = fields.get(TEXT, "")
    choice.update(logprobs=None, finish_reason=finish[0] if finish else None)
    if finish:
        choice["stop_reason"] = finish[1]
    return choice


async def _whole(request: Any, req: GenRequest, jobs: list[Job], chat: bool, served: Served) -> Any:
    """The whole response, once every choice is done (a client that left ends it early)."""
    n = len(jobs) * req.sampling.n
    parts = [{REASONING: "", CONTENT: "", TEXT: ""} for _ in range(n)]
    finish: list[tuple] = [("stop", None)] * n
    tokens = 0
    async for event in _events(jobs, request):
        if event[0] == "error":
            raise _error(event)
        if event[0] == "delta":
            parts[event[1]][event[2]] += event[3]
        else:
            finish[event[1]], tokens = (event[2], event[4]), tokens + event[3]
    choices = []
    for i, part in enumerate(parts):
        fields = {TEXT: part[TEXT]}
        if chat:
            reasoning = part[REASONING] or None
            fields = {"role": "assistant", "content": part[CONTENT], "reasoning_content": reasoning}
        choices.append(_choice(chat, i, fields, False, finish[i]))
    prompt_tokens = sum(job.prompt_tokens for job in jobs)
    kind = ("chatcmpl", "chat.completion") if chat else ("cmpl", "text_completion")
    return envelope(
        new_id(kind[0]), kind[1], served.name, choices, usage=usage(prompt_tokens, tokens)
    )


async def _chunks(
    served: Served, req: GenRequest, jobs: list[Job], chat: bool
) -> AsyncIterator[str]:
    """Server-sent events: a chunk per piece of text, a last one per choice with its
    finish reason, the usage when asked for, then `[DONE]`."""
    rid = new_id("chatcmpl" if chat else "cmpl")
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict], **extra: Any) -> str:
        data = envelope(rid, obj, served.name, choices, **extra)
        return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"

    tokens = 0
    try:
        if chat:
            first = {"role": "assistant", "content": ""}
            yield chunk([_choice(chat, i, first, True) for i in range(len(jobs) * req.sampling.n)])
        async for event in _events(jobs):
            if event[0] == "error":
                yield f"data: {json.dumps(_error(event).body())}\n\n"
                return
            if event[0] == "delta":
                yield chunk([_choice(chat, event[1], {event[2]: event[3]}, True)])
            else:
                tokens += event[3]
                yield chunk([_choice(chat, event[1], {}, True, (event[2], event[4]))])
        if req.include_usage:
            prompt_tokens = sum(job.prompt_tokens for job in jobs)
            yield chunk([], usage=usage(prompt_tokens, tokens))
        yield "data: [DONE]\n\n"
    finally:  # also when the client went away mid-stream: its rows end at their next token
        for job in jobs:
            job.cancelled = True
