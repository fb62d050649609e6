"""The fast backend of the methods' own passes: patching over cached prefixes (the reference:
baselines.ops.patch). Imports as baselines does."""
