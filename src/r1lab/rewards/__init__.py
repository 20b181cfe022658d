"""Rewards: the registry, the rule rewards, and (imported on first use) the reward model.

`from r1lab.rewards import register_reward, RewardInputs` is what a user's reward plugin needs.
"""

from r1lab.rewards import code, rules  # noqa: F401  (registers the rule rewards)
from r1lab.rewards.registry import (
    LAZY_REWARDS,
    REWARDS,
    RewardFn,
    RewardInputs,
    RewardTerm,
    check_terms,
    compute_rewards,
    output_format,
    register_reward,
    resolve_reward,
)

__all__ = [
    "LAZY_REWARDS",
    "REWARDS",
    "RewardFn",
    "RewardInputs",
    "RewardTerm",
    "check_terms",
    "compute_rewards",
    "output_format",
    "register_reward",
    "resolve_reward",
]
