"""Upstream's entry point: teeth masks (teeth_mask/<i>.png) for data/<ID> with EasyPortrait (needs fpn-fp-512.pth)."""

from instag.cli import entry

entry("teeth")
