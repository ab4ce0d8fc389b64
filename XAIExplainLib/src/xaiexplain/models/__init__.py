"""Models: the classifier and cycle-am architectures, and model bundles (safetensors + JSON)."""
