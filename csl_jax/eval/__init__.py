"""Evaluators: features, linear probe, kNN, robustness (attacks) and corruption stages."""
