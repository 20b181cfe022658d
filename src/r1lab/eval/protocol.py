"""DeepSeek-R1's evaluation protocol in one record, and how a run computes it.

The paper samples at temperature 0.6 and top-p 0.95, k samples per problem, and reports pass@1
as their mean (the R1 README: temperature 0.5-0.7, 0.6 recommended). `EvalSampling` carries
those numbers; every place that samples for evaluation reads them from it: `r1lab eval`'s flags,
the trainers' held-out rows (`eval:` of a GRPO or SFT recipe, which subclass it), the
pipeline's final evaluation and rejection sampling's settings record. A context may change the
sample budget (`k`, `max_new_tokens`: a training run's eval row is cheap on purpose), never the
protocol by accident.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1lab.core.config import at_least, check_sampling, choice
from r1lab.core.models import DTYPES, check_device


@dataclass
class EvalSampling:
    """How evaluation draws its samples (the protocol above)."""

    k: int = 8  # samples per problem
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 512

    def validate(self, section: str = "eval") -> None:
        at_least(f"{section}.k", self.k, 1)
        if self.max_new_tokens is not None:
            at_least(f"{section}.max_new_tokens", self.max_new_tokens, 1)
        check_sampling(section, self.temperature, self.top_p)


PROTOCOL = EvalSampling()
"""The protocol's defaults, for signatures and CLI flags that need plain values."""


@dataclass(frozen=True)
class Runtime:
    """How samples are computed, never what they are: none of it enters an evaluation's
    identity (`EvalSettings`), because none of it changes a number.

    `batch_size` problems share an engine call and a write to results.jsonl (the resume
    granularity); `compute_dtype` "bfloat16" runs the matmuls in bf16 (faster on CPUs with
    AVX-512 bf16; the samples differ from fp32 ones in the last bits of their log-probs);
    `concurrency` is how many requests go to a model behind an endpoint at once.
    """

    batch_size: int = 16
    dtype: str = "float32"
    compute_dtype: str = "float32"
    device: str = "auto"
    progress: bool = False
    concurrency: int = 8

    def validate(self) -> None:
        at_least("batch_size", self.batch_size, 1)
        at_least("concurrency", self.concurrency, 1)
        choice("dtype", self.dtype, DTYPES)
        choice("compute_dtype", self.compute_dtype, DTYPES)
        check_device("device", self.device)
