"""Method internals: per-example gradients and projections, integrated gradients, causal patching,
MAGIC's metagradients, the shared feature-method and influence-data parts. Imports as baselines does."""
