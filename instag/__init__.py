"""instag: audio-driven 3D Gaussian talking heads from a few seconds of video (InsTaG, CVPR 2025)."""

from instag.errors import InstagError

__version__ = "0.1.0"
__all__ = ["InstagError", "__version__"]
