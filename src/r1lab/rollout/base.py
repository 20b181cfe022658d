"""The rollout interface shared by every generation engine, and their registry.

An engine receives rendered prompts and returns, per prompt, `n` generations as token ids and
text. Training needs the ids (log-probs are computed on exactly the sampled tokens); rewards
need the text; `finished` tells a completion that stopped on its own from one cut at the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from r1lab.core.errors import unknown_name
from r1lab.text.templates import Prompt


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    # one seed per prompt: each prompt's samples come from its own generator, so they do not
    # depend on which other prompts share the batch (evaluation, rejection sampling)
    seeds: tuple[int, ...] | None = None
    # return each sampled token's log-prob, from engines that compute them apart from the
    # trainer (vllm: GRPO corrects for the gap); the others sample from the trainer's own
    logprobs: bool = False


@dataclass
class Generation:
    prompt_ids: list[int]
    completion_ids: list[int]  # sampled tokens, including the EOS token when one was sampled
    text: str  # decoded completion without special tokens
    finished: bool  # stopped by EOS or a stop string, not by the length limit
    count: int | None = None  # tokens by the engine's count when the ids are unknown (endpoint)
    # the engine's log-prob of each completion token under the distribution it was sampled
    # from, when asked for and the engine computes them apart from the trainer (else None)
    logprobs: list[float] | None = None

    @property
    def length(self) -> int:
        """Completion tokens: the ids sampled here, or the count a remote endpoint reported."""
        return len(self.completion_ids) if self.count is None else self.count


TokenCallback = Callable[[int, int], bool]
"""`on_token(row, token)`, called as each token is sampled (row = prompt index * n + sample);
returning True ends that row there, as a stop string would (a server's client went away, or
its own limit was reached). What `r1lab serve` streams from."""


class RolloutEngine(Protocol):
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Generation]]:
        """`params.n` generations for each prompt, in prompt order: shape [P][n].

        The local engines (`prefix`, `hf`) also take `on_token: TokenCallback`, to stream."""
        ...

    def sync_weights(self, model: Any) -> None:
        """Make the engine sample from `model`'s current weights (after an optimizer step)."""
        ...


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a completion: the generation config's EOS ids and the tokenizer's."""
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos_list = eos if isinstance(eos, list) else [eos]
    return sorted({e for e in [*eos_list, tokenizer.eos_token_id] if e is not None})


# name -> "module:class". An engine's module is imported when it is built, so naming and
# checking an engine (config validation, `r1lab tasks`) imports no model library.
ENGINES = {
    "hf": "r1lab.rollout.hf:HFEngine",
    "prefix": "r1lab.rollout.prefix:PrefixEngine",
    "vllm": "r1lab.rollout.vllm:VLLMEngine",
}
# engines that sample with kernels of their own: the log-probs they report are not the
# trainer's, and GRPO corrects for the gap (`grpo.mismatch`)
SAMPLE_APART = ("vllm",)


def make_engine(name: str, model: Any, tokenizer: Any, **options: Any) -> RolloutEngine:
    """Build the engine `name` around an in-memory policy."""
    import importlib

    if name not in ENGINES:
        raise unknown_name("rollout engine", name, ENGINES)
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(model, tokenizer, **options)
