"""Preprocessing: a talking-head video -> upstream's ``data/<ID>/`` layout, with embedded defaults.

One module per step (``frames``, ``landmarks``, ``parsing``, ``background``, ``gt_torso``,
``teeth``, ``au``, ``tracking``, ``priors``, ``debug``); :mod:`instag.preprocess.pipeline`
runs them in order, resumably. ``split`` rewrites the train/validation split.
"""
