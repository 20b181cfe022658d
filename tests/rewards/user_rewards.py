"""A user-defined reward module, loaded by import path in test_rewards.py."""

from __future__ import annotations

from typing import Any

NOT_A_FUNCTION = 42


def constant(inputs: Any, value: float = 0.5) -> list[float | None]:
    """The same value for every completion: the smallest reward a user could write."""
    return [value] * len(inputs.completions)
