"""Verifiable tasks: built-in procedural ones and dataset-backed ones, behind one interface."""

from r1lab.tasks import (  # noqa: F401  (registers tasks)
    arith,
    code_jsonl,
    countdown,
    datasets,
    general,
    humaneval,
    mix,
    pycode,
)
from r1lab.tasks.base import (
    TASKS,
    Task,
    TaskConfig,
    check_task,
    extract_answer,
    last_boxed,
    make_task,
    split_of,
)

__all__ = [
    "TASKS",
    "Task",
    "TaskConfig",
    "check_task",
    "extract_answer",
    "last_boxed",
    "make_task",
    "split_of",
]
