"""Training: the loop, losses, optimisers and schedules, and checkpoints."""
