"""Engine: distributed set-up, training loop, evaluation, losses, metrics, checkpoints, logging."""
