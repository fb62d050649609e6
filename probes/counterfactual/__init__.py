"""Counterfactual ground truth: retrain f_old on document subsets and measure what each query answer lost."""
