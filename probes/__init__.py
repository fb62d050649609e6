"""probes: training-data attribution between two checkpoints of a causal LM (DLP vs training-free
methods). Top-level modules every layer may import: errors, files (cache folder, atomic writes),
hashing (content hashes and checksums), outputs (output folders a command owns), methods (the one
method interface), plots (the recall@k figure). Layers, lowest first: metrics; data; lm; features;
pairs; baselines (methods) and models (the DLP); counterfactual; compare; the entries
(train_probe.py, compare.py). tests/test_layers.py checks the arrows.

Importing probes sets OpenMP's wait policy to PASSIVE (unless the environment sets one) before torch loads:
with the default busy-wait, torch's intra-op threads spin on a peer that another process has descheduled,
and a run beside one busy process went 15-25x slower (bench/shared_cores.py)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by libgomp once, when torch loads
