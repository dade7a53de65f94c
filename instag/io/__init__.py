"""File and media input/output: atomic writes, WAV reading, video decode/encode and muxing."""
