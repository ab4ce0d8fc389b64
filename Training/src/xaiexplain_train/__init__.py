"""Headless training of the XAIExplain models: GPU when present, several processes with torchrun."""
__version__ = "0.1.0"
