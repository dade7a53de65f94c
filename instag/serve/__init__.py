"""``instag serve``: a local web page where the avatar answers speech in real time (:mod:`instag.serve.app`)."""
