"""Supervised fine-tuning, R1's cold start and the SFT of its later stages: the recipe
(`config`), where rows come from (`data`), rows as token ids (`encode`), the packed loss
(`loss`) and the run (`loop`)."""
