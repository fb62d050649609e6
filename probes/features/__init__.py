"""Feature passes over a loaded pair: the reference extraction (extract), losses, pooling, the
FeatureStore and its on-disk cache, DDP sharing, and the backend seam (backend: PassOptions, Pass);
the speed code in fast/. May import lm, data, metrics and the top-level modules; never methods,
models, compare or counterfactual."""
