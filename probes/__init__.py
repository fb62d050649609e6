"""probes: training-data attribution between two checkpoints of a causal LM (DLP vs training-free methods)."""
