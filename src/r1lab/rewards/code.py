"""`code_tests`: the rule reward for programs, from running them against the problem's tests.

R1 rewards code by test cases; this is that reward, with partial credit as an option for a
small model that rarely passes every test at first (a group whose samples all score 0 gives
GRPO no signal at all). The task runs the tests (`Task.test_verdicts`, batched across the
sandbox's workers and cached, so `accuracy` on the same batch runs nothing twice). Text in,
floats out; no torch.
"""

from __future__ import annotations

from r1lab.core.errors import UserError
from r1lab.rewards.registry import RewardInputs, register_reward


def _check(partial: bool = False) -> None:
    if not isinstance(partial, bool):
        raise UserError(f"partial must be true or false, got {partial!r}")


@register_reward("code_tests", check=_check)
def code_tests_reward(inputs: RewardInputs, partial: bool = False) -> list[float | None]:
    """1.0 when every test passes, else 0.0; with `partial`, the fraction of tests passed.
    None for problems without tests (not code).

    Example: a problem with 4 tests and verdicts [passed, passed, failed, timeout] scores 0.0,
    or 0.5 with `partial: true`; a math problem in the same batch scores None.
    """
    _check(partial)
    if inputs.task is None:
        raise UserError("reward 'code_tests' needs a task to run tests, and none was given")
    values: list[float | None] = []
    for verdicts in inputs.task.test_verdicts(inputs.texts(), inputs.examples):
        if not verdicts:
            values.append(None)
            continue
        passed = sum(v == "passed" for v in verdicts)
        values.append(passed / len(verdicts) if partial else float(passed == len(verdicts)))
    return values
