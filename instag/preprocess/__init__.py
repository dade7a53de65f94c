"""Preprocessing: a talking-head video -> upstream's ``data/<ID>/`` layout, with embedded defaults.

One module per step (``frames``, ``landmarks``, ``parsing``, ``background``, ``gt_torso``,
``teeth``, ``au``, ``tracking``, ``priors``, ``debug``); :mod:`instag.preprocess.pipeline`
runs them in order, resumably; :mod:`instag.preprocess.batch` is the ``instag process`` command (one video, or a
folder of them across workers). ``split`` rewrites the train/validation split.
"""
