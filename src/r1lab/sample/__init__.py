"""Rejection sampling, R1's stage 3: the recipe (`config`), the run (`run`), which samples are
kept (`select`), the readability filters (`filters`) and the generative judge (`judge`)."""
