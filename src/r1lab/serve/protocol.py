"""The OpenAI API's request and response shapes, as `r1lab serve` reads and writes them.

Requests are read by hand rather than by a schema library, so every mistake is answered in
the API's own error form — `{"error": {"message", "type", "param", "code"}}` with a 4xx
status — naming the field and what is valid, which is what OpenAI clients raise from
(`BadRequestError`, `AuthenticationError`, `NotFoundError`, `RateLimitError`, ...).
Fields the API has and r1lab does not implement (tools, log-probs, echo) are refused, not
ignored; other unknown fields are ignored, as the API does.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from r1lab.core.config import at_least


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for; beyond it the request is refused with a 4xx error."""

    max_tokens: int = 512  # per choice; also the default when a request names none
    max_prompt_tokens: int = 2048
    max_concurrent: int = 64  # requests in flight (queued or generating); more get 429
    max_n: int = 8  # choices per request
    max_body_bytes: int = 1_000_000

    def validate(self) -> None:
        for key, value in vars(self).items():
            at_least("--" + key.replace("_", "-"), value, 1)


class RequestError(Exception):
    """A request the server refuses: HTTP `status` and the API's error object."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict[str, Any]:
        error = {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}
        return {"error": error}


@dataclass(frozen=True)
class Sampling:
    """One request's sampling settings (per choice)."""

    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class GenRequest:
    """A checked request: chat `messages`, or completion `prompts` (one or more texts)."""

    model: str
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    messages: tuple[dict[str, str], ...] = ()
    prompts: tuple[str, ...] = ()


_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logit_bias", "suffix")
_FALSE_ONLY = ("logprobs", "echo")
_ROLES = ("system", "user", "assistant")


def _number(body: dict, key: str, default: float, low: float, high: float, integer: bool) -> Any:
    value = body.get(key)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise RequestError(f"{key} must be {kind} in [{low}, {high}], got {value!r}", key)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise RequestError("stop must be a string or a list of up to 4 strings", "stop")
    return tuple(s for s in stops if s)


def _sampling(body: dict, limits: ServeLimits) -> Sampling:
    for key in _UNSUPPORTED:
        if body.get(key):
            raise RequestError(f"{key} is not supported by r1lab serve", key)
    for key in _FALSE_ONLY:
        if body.get(key) not in (None, False, 0):
            raise RequestError(f"{key} is not supported by r1lab serve", key)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, limits.max_tokens, 1, 2**31, True)
    if max_tokens > limits.max_tokens:
        raise RequestError(
            f"{key} is {max_tokens}, more than this server allows ({limits.max_tokens})",
            key,
            code="max_tokens_exceeded",
        )
    return Sampling(
        n=_number(body, "n", 1, 1, limits.max_n, True),
        max_tokens=max_tokens,
        temperature=float(_number(body, "temperature", 1.0, 0.0, 2.0, False)),
        top_p=float(_number(body, "top_p", 1.0, 1e-9, 1.0, False)),
        top_k=_number(body, "top_k", 0, 0, 2**31, True),
        stop=_stop(body),
        seed=_number(body, "seed", None, -(2**63), 2**63 - 1, True),
    )


def _stream(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError(f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    return stream, bool(options.get("include_usage")) and stream


def _content(message: dict, where: str) -> str:
    """A message's text: a string, or a list of `{"type": "text", "text": ...}` parts."""
    content = message.get("content")
    if isinstance(content, list):
        if all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            content = "".join(str(p.get("text", "")) for p in content)
        else:
            raise RequestError(f"{where}.content: only text parts are supported", where)
    if not isinstance(content, str):
        raise RequestError(f"{where}.content must be a string", where)
    return content


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model is required: the name `GET /v1/models` lists", "model")
    return model


def parse_chat(body: Any, limits: ServeLimits) -> GenRequest:
    """A `/v1/chat/completions` body, checked; a RequestError says what is wrong."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    checked = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise RequestError(f"{where} needs a role: one of {', '.join(_ROLES)}", where)
        checked.append({"role": message["role"], "content": _content(message, where)})
    if checked[-1]["role"] != "user":
        raise RequestError("the last message must be the user's", "messages")
    stream, usage = _stream(body)
    return GenRequest(_model(body), _sampling(body, limits), stream, usage, messages=tuple(checked))


def parse_completion(body: Any, limits: ServeLimits) -> GenRequest:
    """A `/v1/completions` body: `prompt` is a string or a list of strings."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError("prompt must be a string or a non-empty list of strings", "prompt")
    sampling = _sampling(body, limits)
    if len(prompts) * sampling.n > limits.max_n:
        raise RequestError(
            f"{len(prompts)} prompts x n={sampling.n} is more than {limits.max_n} choices", "n"
        )
    stream, usage = _stream(body)
    return GenRequest(_model(body), sampling, stream, usage, prompts=tuple(prompts))


# --------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
    }


def envelope(rid: str, obj: str, model: str, choices: list[dict], **extra: Any) -> dict[str, Any]:
    """The fields every response and chunk shares."""
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }
