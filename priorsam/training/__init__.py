"""Training: feature cache of augmented views, datasets, the training loops (heads and 3D localiser)."""
