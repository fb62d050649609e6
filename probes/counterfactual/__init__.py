"""Counterfactual truth: retrains on subsets (regimes, executors), the ground-truth format, removal,
MAGIC's influence matrix as data (oracle).
May import everything below it and probes.compare's configuration and steps; never compare.py."""
