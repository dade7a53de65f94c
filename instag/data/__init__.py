"""The dataset format of ``data/<ID>/`` (upstream's layout), cameras and the streaming frame loader."""
