"""The fast backend: the reference passes of probes.features, faster (compiled blocks, a fused LM head,
attention masks dropped for right padding). Reached only through probes.features.backend.pass_for;
each module equals its reference to 1e-10 in float64 (tests/test_lm_backend.py). Imports as
probes.features does."""
