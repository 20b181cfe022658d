"""Training loops: GRPO (reinforcement learning) and SFT."""
