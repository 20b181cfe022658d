"""The whole R1 recipe chained (`r1lab pipeline`): the YAML (`config`), the kinds of stage
(`stages`), running them with lineage, skipping and resume (`run`), and the report (`report`)."""
