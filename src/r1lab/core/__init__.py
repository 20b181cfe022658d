"""What every stage stands on: errors, the records that travel through the loop, the YAML ->
dataclass config engine, models, checkpoints, memory policy and run-file I/O.

Nothing here imports a stage (or `text`, `tasks`, `rewards`, ...): a test keeps it so.
"""
