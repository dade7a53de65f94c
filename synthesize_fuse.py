"""Upstream-named entry point: ``python synthesize_fuse.py -S data/<ID> -M output/<ID> --audio new.wav``."""

from instag.cli import entry

entry("synthesize")
