"""Conversation rows: what SFT trains on, and what rejection sampling mixes in.

A row is `SFTRow(id, prompt, completion, source, history)`: `prompt` is the bare user message
(the trainer renders it with the configured template), `completion` the whole assistant
response, `history` the earlier exchanges of a multi-turn conversation. A conversations file
has one JSON object a line: `{"messages": [{"role": "user", ...}, {"role": "assistant", ...},
...]}` or `{"prompt": ..., "completion": ...}`, an optional `id`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r1lab.core.errors import UserError
from r1lab.core.runfiles import Located, read_records

Exchange = tuple[str, str]
"""One earlier (user, assistant) exchange of a multi-turn conversation."""


@dataclass(frozen=True)
class SFTRow:
    """A conversation to train on: `history` (earlier exchanges, oldest first), then the user
    `prompt` and the assistant `completion`. Every assistant turn is a training target, the
    earlier ones included (each in its own sequence, see `sft.encode`)."""

    id: str
    prompt: str
    completion: str
    source: str
    history: tuple[Exchange, ...] = ()

    @property
    def turns(self) -> tuple[Exchange, ...]:
        """Every (user, assistant) exchange, this row's own last."""
        return (*self.history, (self.prompt, self.completion))

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages (the `messages` form of a conversations file)."""
        pairs = [(("user", u), ("assistant", a)) for u, a in self.turns]
        return [{"role": role, "content": text} for pair in pairs for role, text in pair]

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        if not self.history:
            del row["history"]
        else:
            row["history"] = [list(exchange) for exchange in self.history]
        return row


def digest(*parts: str) -> str:
    """A short stable id for a row made of these texts."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:12]


def json_lines(path: Path) -> list[Located]:
    """(`file:line`, object) for each non-blank line; a file without rows is an error."""
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    rows = read_records(path)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _text_field(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise UserError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def conversation_turns(obj: dict[str, Any], where: str) -> tuple[Exchange, ...]:
    """The (user, assistant) exchanges of one JSONL row: `messages` or `prompt` + `completion`.

    `messages` alternate user and assistant turns, starting with a user turn and ending with
    an assistant one. A system message is an error: the template sets the system prompt.
    """
    if "messages" not in obj:
        if "prompt" not in obj and "completion" not in obj:
            raise UserError(
                f"{where}: missing field 'messages' (a row needs `messages`, or `prompt` and "
                "`completion`)"
            )
        return ((_text_field(obj, "prompt", where), _text_field(obj, "completion", where)),)
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: field 'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise UserError(f"{where}: messages[{i}] must be an object with role and content")
        _text_field(message, "role", f"{where}: messages[{i}]")
        _text_field(message, "content", f"{where}: messages[{i}]")
    roles = [m["role"] for m in messages]
    expected = ["user", "assistant"] * (len(roles) // 2)
    if len(roles) < 2 or len(roles) % 2 or roles != expected:
        raise UserError(
            f"{where}: messages must alternate user and assistant turns, starting with a user "
            f"turn and ending with an assistant one (the template sets the system prompt), "
            f"got roles {roles}"
        )
    contents = [m["content"] for m in messages]
    return tuple(zip(contents[::2], contents[1::2], strict=True))


def jsonl_rows(path: str | Path, limit: int | None = None) -> list[SFTRow]:
    """Rows of a conversations file; the id is the row's `id` or a hash of its text."""
    path = Path(path)
    rows = []
    for where, obj in json_lines(path)[:limit]:
        *history, (prompt, completion) = conversation_turns(obj, where)
        texts = [text for exchange in (*history, (prompt, completion)) for text in exchange]
        row_id = str(obj["id"]) if "id" in obj else "jsonl-" + digest(*texts)
        rows.append(SFTRow(row_id, prompt, completion, f"jsonl:{path.name}", tuple(history)))
    return rows
