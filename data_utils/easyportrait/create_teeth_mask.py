"""Upstream's entry point: teeth_mask/<i>.npy for data/<ID> with EasyPortrait (needs fpn-fp-512.pth)."""

from instag.cli import entry

entry("teeth")
