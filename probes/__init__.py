"""probes: training-data attribution between two checkpoints of a causal LM (DLP vs training-free
methods). Top-level modules every layer may import: errors, files (cache folder, atomic writes),
hashing (content hashes and checksums), outputs (output folders a command owns), methods (the one
method interface), plots (the recall@k figure). Layers, lowest first: metrics; data; lm; features;
pairs; baselines (methods) and models (the DLP); counterfactual; compare; the entries
(train_probe.py, compare.py). tests/test_layers.py checks the arrows."""
