"""Measuring explanations and classifiers: localization, faithfulness, classifier metrics, the benchmark."""
