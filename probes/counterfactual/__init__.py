"""Counterfactual ground truth: f_old retrained on random document subsets, and its on-disk format."""
