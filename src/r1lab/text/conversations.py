"""Conversation rows: what SFT trains on, and what rejection sampling mixes in.

A row is `SFTRow(id, prompt, completion, source)`: `prompt` is the bare user message (the
trainer renders it with the configured template) and `completion` the whole assistant response.
A conversations file has one JSON object a line: `{"messages": [{"role": "user", ...},
{"role": "assistant", ...}]}` or `{"prompt": ..., "completion": ...}`, an optional `id`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r1lab.core.errors import UserError
from r1lab.core.runfiles import Located, read_records


@dataclass(frozen=True)
class SFTRow:
    id: str
    prompt: str
    completion: str
    source: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


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


def conversation_pair(obj: dict[str, Any], where: str) -> tuple[str, str]:
    """(prompt, completion) of one JSONL row: `messages` or `prompt` + `completion`.

    `messages` must end with a user turn followed by the assistant's answer; a system message
    or earlier turns are an error (the template sets the system prompt; multi-turn is not
    supported yet).
    """
    if "messages" not in obj:
        if "prompt" not in obj and "completion" not in obj:
            raise UserError(
                f"{where}: missing field 'messages' (a row needs `messages`, or `prompt` and "
                "`completion`)"
            )
        return _text_field(obj, "prompt", where), _text_field(obj, "completion", where)
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: field 'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise UserError(f"{where}: messages[{i}] must be an object with role and content")
        _text_field(message, "role", f"{where}: messages[{i}]")
        _text_field(message, "content", f"{where}: messages[{i}]")
    roles = [m["role"] for m in messages]
    if roles != ["user", "assistant"]:
        raise UserError(
            f"{where}: messages must be one user turn then one assistant turn, got roles {roles}"
        )
    return messages[0]["content"], messages[1]["content"]


def jsonl_rows(path: str | Path, limit: int | None = None) -> list[SFTRow]:
    """Rows of a conversations file; the id is the row's `id` or a hash of its text."""
    path = Path(path)
    rows = []
    for where, obj in json_lines(path)[:limit]:
        prompt, completion = conversation_pair(obj, where)
        row_id = str(obj["id"]) if "id" in obj else "jsonl-" + digest(prompt, completion)
        rows.append(SFTRow(row_id, prompt, completion, f"jsonl:{path.name}"))
    return rows
