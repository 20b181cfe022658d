"""What every trainer shares: the optimizer (with exact fp32 masters), log-probs without
[B, T, V] logits, the seeded data stream, the run loop, progress and plots of a run."""
