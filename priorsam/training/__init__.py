"""Training: feature cache of augmented views, datasets, the training loop and its CLI."""
