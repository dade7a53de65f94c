"""Gaussian clouds, the tri-plane grid encoder and the motion fields (import the submodules directly)."""
