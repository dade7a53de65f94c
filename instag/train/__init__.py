"""Training: one engine for face / mouth / fuse stages in pre-training and adaptation."""
