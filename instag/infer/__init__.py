"""Inference: offline synthesis from new audio (:mod:`instag.infer.synthesize`) and chunked
real-time synthesis (:mod:`instag.infer.stream`), over one rendering path."""
