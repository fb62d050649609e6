"""One file per attribution method behind the one interface (probes.methods); their internals in ops/.
May import features, lm, pairs, data, metrics and the top-level modules; never models, compare,
counterfactual or reporting."""
