"""Kept for scripts written before r1lab had one package per stage: the GRPO recipe's loaders.

New code imports `r1lab.grpo.config` (the GRPO schema) or `r1lab.core.config` (the engine).
"""

from r1lab.grpo.config import Config, build_config, load_config

__all__ = ["Config", "build_config", "load_config"]
