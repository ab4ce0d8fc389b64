"""Explanations: the method registry, captum methods, counterfactuals, iterative augmentation, whole-series explanation."""
