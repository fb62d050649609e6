"""Building and fine-tuning pairs: presets, the tokenizer, the fine-tune (train), its recorded recipe
(recipe) and its replay as a pure function (replay), the tiny default pair, the reference evaluation; ``python
-m probes.pairs build|evaluate``. May import lm, data, metrics and the top-level modules; never features,
methods, models, compare or counterfactual."""
