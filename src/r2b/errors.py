"""Errors a user can cause (bad config, missing data, wrong checkpoint) and ends of a run that are
not bugs (a diverged loss, a stop requested by a signal).

The CLI prints a `UserError` as one line, ``<label>: <message>`` (label ``error`` unless the class
says otherwise), and exits with the class's ``exit_code`` (2), without a traceback. Everything
else is a bug and keeps its traceback.

A `UserError` raised inside a DataLoader worker process comes back to the main process as a new
exception of the same class whose message is the worker's whole formatted traceback
(``torch.utils.data._utils.ExceptionWrapper.reraise``); the constructor keeps only the original
message, so a corrupt image in a streamed folder still gives one line.
"""

from __future__ import annotations

_WORKER_MARK = "Original Traceback (most recent call last):"


def _original_message(message: str) -> str:
    """The worker's own message when ``message`` is a DataLoader re-raise, else ``message``."""
    if _WORKER_MARK not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and head.rsplit(".", 1)[-1][:1].isupper() else last


class UserError(Exception):
    """An error caused by the user's input; its message says what is wrong and what to do."""

    label = "error"
    exit_code = 2

    def __init__(self, message: str = "") -> None:
        super().__init__(_original_message(str(message)))


class TrainingDiverged(UserError):
    """A training loss became NaN or infinite; the stage stopped and kept its last good state."""

    exit_code = 3


class RunStopped(UserError):
    """SIGTERM or SIGINT stopped training after the step in progress; the state was saved.

    Exit status ``128 + signal number`` (143 for SIGTERM, 130 for SIGINT), as a shell reports a
    process ended by that signal, so schedulers see the pre-emption for what it is.
    """

    label = "stopped"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)
