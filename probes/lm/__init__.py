"""The loaded model and its text plumbing: loading a pair, tokenisation, batching and answer scoring,
the decoder stack (and its hooks), the maskless causal attention (causal), layer ids, ranks. May import data,
metrics and the top-level modules; never features, pairs, methods, models, compare or counterfactual."""
