"""Sampling-based evaluation as DeepSeek reported it: pass@1 over k samples, cons@k, pass@k.

`protocol` holds the protocol's numbers (one record), `metrics` the pure estimators, `store`
an evaluation directory on disk, `run` the sampling, `report` tables and comparisons, `curves`
a training run's accuracy against its steps.
"""
