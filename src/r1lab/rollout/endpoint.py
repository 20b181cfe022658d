"""A model behind an OpenAI-compatible endpoint, as a rollout engine.

Spec: `openai:MODEL@BASE_URL` (`core.models.endpoint_parts`), e.g.
`openai:deepseek-reasoner@https://api.deepseek.com/v1` or a model served by `r1lab serve`.
The key comes from the environment: `R1LAB_API_KEY`, else `OPENAI_API_KEY` (none: no key).

Each sample is one request (`n` = 1), so each can carry its own seed: sample j of a prompt
seeded s asks with seed s + j (`r1lab serve` honours it exactly; other APIs at best try). A
prompt rendered from chat messages (every template but `r1_zero`) goes to
`/chat/completions` as those messages, and the reply's `reasoning_content` and `content`
are joined into one response in the run's output format (`text.formats.join_reasoning`), so
it is graded as a local model's would be; a plain-text prompt goes to `/completions`.

What differs from a local engine: there are no token ids and no log-probs (such a model can
be evaluated, sampled, judge and teach, never trained); `Generation.count` holds the
server's count of completion tokens; a chat template's prefill (e.g. `<think>\\n`) cannot be
sent, so the served model decides whether it thinks first; a stop string is put back at the
end of the text only when the server says which one matched (`stop_reason`, as `r1lab serve`
and vLLM do).

Requests run `concurrency` at a time. A failure that may pass (no connection, a timeout, 429,
5xx) is retried with exponential backoff (honouring `Retry-After`), up to `retries` times;
any other refusal (a wrong key, an unknown model) stops the run at once with the server's
message. Every answer is appended to `cache` (JSONL, keyed by a hash of the URL and the
request body) before it is used, so an interrupted evaluation or sampling run asks nothing
twice when it resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from r1lab.core.errors import UserError
from r1lab.core.models import endpoint_parts
from r1lab.core.runfiles import append_rows, jsonl_text, read_jsonl, write_atomic
from r1lab.rollout.base import Generation, SamplingParams
from r1lab.text.formats import THINK, OutputFormat, join_reasoning
from r1lab.text.templates import Prompt

KEY_VARIABLES = ("R1LAB_API_KEY", "OPENAI_API_KEY")
TRANSIENT = {408, 409, 429, 500, 502, 503, 504}


def api_key() -> str | None:
    """The key for endpoint requests, from the first of `KEY_VARIABLES` that is set."""
    return next((os.environ[k] for k in KEY_VARIABLES if os.environ.get(k)), None)


class ResponseCache:
    """Answers by request hash, in a JSONL file appended as they come (thread-safe)."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.lock, self.answers = path, threading.Lock(), {}
        if path is not None and path.exists():
            rows = read_jsonl(path, partial_tail=True)
            if path.stat().st_size and not path.read_text().endswith("\n"):
                write_atomic(path, jsonl_text(rows))  # drop a torn last line before appending
            self.answers = {row["key"]: row["answer"] for row in rows}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.answers.get(key)

    def put(self, key: str, answer: dict[str, Any]) -> None:
        with self.lock:
            self.answers[key] = answer
            if self.path is not None:
                append_rows(self.path, [{"key": key, "answer": answer}])


class EndpointEngine:
    """The `RolloutEngine` of an endpoint spec (see the module docstring)."""

    def __init__(
        self,
        spec: str,
        cache: str | Path | None = None,
        fmt: OutputFormat = THINK,
        concurrency: int = 8,
        retries: int = 6,
        backoff_s: float = 1.0,
        timeout_s: float = 600.0,
    ) -> None:
        import httpx

        parts = endpoint_parts(spec)
        if parts is None:
            raise UserError(f"{spec!r} is not an endpoint spec (openai:MODEL@BASE_URL)")
        self.model, self.url = parts
        self.fmt, self.concurrency = fmt, max(1, concurrency)
        self.retries, self.backoff_s = retries, backoff_s
        self.cache = ResponseCache(Path(cache) if cache is not None else None)
        key = api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout_s)
        self.asked = 0  # requests sent (cache misses), for tests and reports

    def sync_weights(self, model: Any) -> None:
        raise UserError("a model behind an endpoint cannot be trained: its weights are not here")

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Generation]]:
        """`params.n` generations per prompt, one request each, `concurrency` at a time."""
        asks = [
            (prompt, self._body(prompt, params, i, j))
            for i, prompt in enumerate(prompts)
            for j in range(params.n)
        ]
        with ThreadPoolExecutor(self.concurrency) as pool:
            flat = list(pool.map(lambda ask: self._generation(*ask), asks))
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    def _body(self, prompt: Prompt, params: SamplingParams, i: int, j: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.top_k:
            body["top_k"] = params.top_k
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seeds is not None:
            body["seed"] = (params.seeds[i] + j) % (1 << 63)
        if prompt.messages:
            body["messages"] = [{"role": r, "content": c} for r, c in prompt.messages]
        else:
            body["prompt"] = prompt.text
        return body

    def _generation(self, prompt: Prompt, body: dict[str, Any]) -> Generation:
        route = "/chat/completions" if "messages" in body else "/completions"
        key = hashlib.sha256(
            json.dumps([self.url + route, body], sort_keys=True).encode()
        ).hexdigest()
        answer = self.cache.get(key)
        if answer is None:
            answer = self._answer(route, body)
            self.cache.put(key, answer)
        text = answer["text"]
        if "content" in answer:  # a chat reply: both parts in the run's format
            text = join_reasoning(
                answer.get("reasoning") or "", answer.get("content") or "", self.fmt
            )
            if prompt.prefill and text.startswith(prompt.prefill):
                text = text[len(prompt.prefill) :]
        if answer["finish_reason"] == "stop" and isinstance(answer.get("stop_reason"), str):
            text += answer["stop_reason"]
        return Generation([], [], text, answer["finish_reason"] == "stop", answer["tokens"])

    def _answer(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request, retried while its failure may pass; the parts of the reply we keep."""
        import httpx

        where = f"{self.url}{route}"
        for attempt in range(self.retries + 1):
            wait = self.backoff_s * 2**attempt * (1 + 0.1 * random.random())
            try:
                reply = self.client.post(where, json=body)
            except httpx.TransportError as err:
                problem = f"{type(err).__name__}: {err}"
            else:
                if reply.status_code == 200:
                    self.asked += 1
                    try:
                        return _kept(reply.json(), route)
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        raise UserError(f"{where} answered with an unexpected body: "
                                        f"{reply.text[:200]!r}") from None
                problem = f"HTTP {reply.status_code}: {_message(reply)}"
                if reply.status_code not in TRANSIENT:
                    raise UserError(f"{where} refused the request: {problem}")
                after = reply.headers.get("retry-after", "")
                wait = float(after) if after.replace(".", "", 1).isdigit() else wait
            if attempt < self.retries:
                time.sleep(min(wait, 60.0))
        raise UserError(f"{where}: no answer after {self.retries + 1} tries ({problem})")


def _message(reply: Any) -> str:
    """The API error's message, else the start of the body."""
    try:
        return str(reply.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return reply.text[:200]


def _kept(data: dict[str, Any], route: str) -> dict[str, Any]:
    """What the cache keeps of one reply: its text parts, finish and token count."""
    choice = data["choices"][0]
    tokens = (data.get("usage") or {}).get("completion_tokens")
    kept = {
        "finish_reason": choice.get("finish_reason"),
        "stop_reason": choice.get("stop_reason"),
        "tokens": tokens,
    }
    if route == "/completions":
        return {**kept, "text": choice.get("text") or ""}
    message = choice.get("message") or {}
    return {
        **kept,
        "text": "",
        "reasoning": message.get("reasoning_content"),
        "content": message.get("content") or "",
    }
