"""Kept for scripts written before r1lab had one package per stage: `load_model` and friends.

New code imports `r1lab.core.models`.
"""

from r1lab.core.models import DEFAULT_MODEL, load_model, load_tokenizer

__all__ = ["DEFAULT_MODEL", "load_model", "load_tokenizer"]
