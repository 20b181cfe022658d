"""Rollout engines: generate G samples per prompt behind one interface."""

from r1lab.rollout.base import ENGINES, Generation, RolloutEngine, SamplingParams, make_engine

__all__ = ["ENGINES", "Generation", "RolloutEngine", "SamplingParams", "make_engine"]
