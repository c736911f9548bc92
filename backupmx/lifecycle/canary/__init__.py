"""The weekly canary: its settings, the hand-off, the verdict and the run."""
