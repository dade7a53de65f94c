"""Kept for upstream's habit of ``pip install -e .``; the metadata lives in pyproject.toml."""

from setuptools import setup

setup()
