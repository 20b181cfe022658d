"""GRPO, R1-Zero's and R1's reinforcement learning: the algorithm (`algos`), the recipe
(`config`), one step's rollouts and rewards (`step`), the policy update (`update`), the run
(`loop`), its metrics row (`metrics`) and the preflight check (`preflight`)."""
