"""The project's one exception type.

Every failure a user can cause (bad input, missing weights, a wrong checkpoint) raises
:class:`InstagError` with a message that names the file, the frame and what to do. The CLI
prints it on one line and exits non-zero; tracebacks are shown only with ``--debug``.
"""


class InstagError(Exception):
    """A user-facing error: the message is complete and printed as one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
