"""Upstream's entry point: convert 3DMM/01_MorphableModel.mat into 3DMM/3DMM_info.npz (run in this folder)."""

from instag.cli import entry

entry("convert-bfm")
