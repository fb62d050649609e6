"""The comparison: its configuration, its run in named steps (run, steps), checks against the loaded
pair (preflight), tuning on the validation queries, reuse of finished rows, its results on disk and
their LDS columns (lds_results); compare.py is its thin entry. May import every layer below it."""
