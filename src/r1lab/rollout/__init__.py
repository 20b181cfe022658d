"""Rollout engines: generate G samples per prompt behind one interface.

`ENGINES` names them all (`hf`, `prefix`, `vllm`); `make_engine` imports an engine's module
only when it builds one, so importing this package imports no model library.
"""

from r1lab.rollout.base import ENGINES, Generation, RolloutEngine, SamplingParams, make_engine

__all__ = ["ENGINES", "Generation", "RolloutEngine", "SamplingParams", "make_engine"]
