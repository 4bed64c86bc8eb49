"""Training: SFT and RL on trajectories."""
