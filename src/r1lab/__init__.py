"""r1lab: the DeepSeek-R1 recipe (GRPO with rule rewards, cold start, rejection sampling,
distillation, sampling-based evaluation) as a tool that runs from a laptop CPU to GPUs."""

__version__ = "0.1.0"
