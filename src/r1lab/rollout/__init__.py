"""Rollout engines: generate G samples per prompt behind one interface.

Importing the package registers every engine (`hf`, `prefix`), so `make_engine` and `ENGINES`
know them all wherever they are reached from.
"""

from r1lab.rollout import hf, prefix  # noqa: F401  (registers the engines)
from r1lab.rollout.base import ENGINES, Generation, RolloutEngine, SamplingParams, make_engine

__all__ = ["ENGINES", "Generation", "RolloutEngine", "SamplingParams", "make_engine"]
