"""The project's one exception type.

Every failure a user can cause (bad input, missing weights, a wrong checkpoint) raises
:class:`InstagError` with a message that names the file, the frame and what to do. The CLI
prints it on one line and exits non-zero; tracebacks are shown only with ``--debug``.
"""

# How PyTorch re-raises an error of a DataLoader worker in the main process: the type is kept and the
# message becomes "Caught InstagError in DataLoader worker process 0.\nOriginal Traceback (...)...
# instag.errors.InstagError: <message>"; only the original message is the user's.
_WORKER_PREFIX = "Caught InstagError in "
_ORIGINAL = "InstagError: "


class InstagError(Exception):
    """A user-facing error: the message is complete and printed as one line."""

    def __init__(self, message: str):
        message = str(message)
        if message.startswith(_WORKER_PREFIX) and _ORIGINAL in message:
            message = message.rsplit(_ORIGINAL, 1)[1]
        super().__init__(" ".join(message.split()))
