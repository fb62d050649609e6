"""The fast backend: the same passes as the reference ones in `probes.lm`, faster (compiled blocks, a fused
LM head, attention masks dropped for right padding, patching over cached prefixes). Reached only through
`probes.lm.backend.pass_for`; each module here equals its reference to 1e-10 in float64
(tests/test_lm_backend.py)."""
