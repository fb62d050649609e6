"""Training-free attribution methods and reference baselines, one file per method, one interface."""
