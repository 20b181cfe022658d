"""The YAML -> dataclass engine behind every recipe: typed sections, `--set a.b=c` overrides.

Every key a user can write is a dataclass field of some recipe schema (the GRPO one lives in
`r1lab.grpo.config`, SFT's in `r1lab.sft.config`, ...), so a typo is an error naming the key
and the valid ones, and a bad value is an error at load time rather than an hour into a run.
This module knows no schema: it coerces values to field types, applies overrides, reads YAML
files with errors that name them, and offers the small validators the schemas share.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from r1lab.core.errors import UserError, did_you_mean


def at_least(key: str, value: int, low: int) -> None:
    """`value >= low`, else an error naming the key."""
    if value < low:
        raise UserError(f"{key} must be >= {low}, got {value}")


def choice(key: str, value: str, valid: typing.Iterable[str]) -> None:
    """`value` is one of `valid`, else an error listing them."""
    valid = list(valid)
    if value not in valid:
        raise UserError(f"{key}: unknown value {value!r}; valid: {', '.join(valid)}")


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_name(key: str, name: str) -> None:
    """A run, stage or output name is one folder: letters, digits, `_`, `-`, `.` (not first).

    It is joined to an output directory, so an empty name would write into the directory
    itself and `../x` outside it.
    """
    if not _NAME_RE.fullmatch(name):
        raise UserError(
            f"{key}: {name!r} is not a valid name: use letters, digits, _, - and . "
            "(it names the output folder)"
        )


def check_sampling(section: str, temperature: float, top_p: float) -> None:
    """Temperature >= 0 (0 = greedy) and top_p in (0, 1], named by config section."""
    if temperature < 0:
        raise UserError(f"{section}.temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise UserError(f"{section}.top_p must be in (0, 1], got {top_p}")


def validate_sections(config: Any) -> None:
    """Call `validate()` on every section of a recipe dataclass that has one."""
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if hasattr(value, "validate"):
            value.validate()


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check/convert one YAML value against a field's type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, {} if value is None else value, key)  # `grpo:` left empty
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads `3e-6` (no dot) as a string
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    if hint is Any:
        return value
    raise UserError(f"{key} must be of type {getattr(hint, '__name__', hint)}, got {value!r}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys name themselves and the valid ones."""
    where = prefix or "the config"
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise UserError(
                f"unknown config key {dotted!r}{did_you_mean(key, names)}; valid keys under "
                f"{where}: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise UserError(f"{where}: {err}") from err


def _apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b=c` override to the raw mapping; `c` is parsed as YAML (`8`, `[..]`)."""
    if "=" not in assignment:
        raise UserError(f"--set expects key=value, got {assignment!r}")
    key, text = assignment.split("=", 1)
    value = parse_value(text, f"--set {key.strip()}")
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: i + 1])]
        elif isinstance(node, dict):
            if node.get(part) is None:  # absent, or an empty YAML section (`grpo:`)
                node[part] = {}
            node = node[part]
        else:
            break
    if not isinstance(node, dict | list):
        raise UserError(f"--set {key.strip()}: {'.'.join(parts[:-1])} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = value
    else:
        node[last] = value


def parse_value(text: str, where: str) -> Any:
    """A command-line value read as YAML (`8`, `true`, `[a, b]`, `{k: v}`; "" stays "")."""
    if not text:
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(
            f"{where}: {text!r} is not a valid value ({yaml_problem(err)}); quote it to pass a "
            "string, "
            f"e.g. {where.split()[0]} '{where.split()[-1]}=\"{text}\"'"
        ) from err


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's own spans several)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(err, "context", None)
    return where + problem + (f" ({context})" if context else "")


def _list_index(node: list[Any], part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(
            f"--set {'.'.join(parts)}: {part!r} is not an index of a {len(node)}-item list"
        )
    return int(part)


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str] = ()) -> dict[str, Any]:
    """A deep copy of `raw` with the `--set a.b=c` overrides applied (the caller's is untouched).

    Options belong to the task they were written for: `--set task.name=countdown` on an arith
    recipe drops the recipe's arith options (unless `task.options...` is set as well), instead
    of failing on an option countdown does not have.
    """
    raw = copy.deepcopy(dict(raw or {}))
    keys = [assignment.split("=", 1)[0].strip() for assignment in overrides]
    for assignment in overrides:
        _apply_override(raw, assignment)
    for key in keys:
        section = key.removesuffix(".name")
        if key.endswith("task.name") and not any(k.startswith(f"{section}.options") for k in keys):
            node = _section_at(raw, section)
            if isinstance(node, dict):
                node.pop("options", None)
    return raw


def _section_at(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def load_kind_recipe(path: str | Path, kind: str, what: str) -> dict[str, Any]:
    """A recipe YAML that must say `kind: KIND` (`what`, e.g. "an SFT recipe", names it).

    A recipe without `kind` is a GRPO recipe; saying so beats listing unknown keys.
    """
    raw = load_yaml(path)
    if "kind" not in raw:
        raise UserError(
            f"{path}: {what} starts with `kind: {kind}` (a recipe without `kind` is a GRPO "
            "recipe: run it with `r1lab train`)"
        )
    return raw


def check_kind(raw: dict[str, Any], kind: str) -> None:
    """A recipe's top-level `kind` (default `grpo`) must be the one the command runs."""
    found = raw.get("kind", "grpo")
    if found != kind:
        command = {"grpo": "r1lab train"}.get(str(found), f"r1lab {found}")
        raise UserError(
            f"this is a `kind: {found}` recipe: run it with `{command}` "
            f"(this command runs `kind: {kind}` recipes)"
        )


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file into a mapping, with errors that name the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    if not path.is_file():
        raise UserError(f"{path} is not a file: name a recipe YAML")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a text file ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML: {yaml_problem(err)}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections")
    return data


def dump_config(config: Any, path: str | Path) -> None:
    """Write the fully resolved config, so a run records exactly how it was made."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
