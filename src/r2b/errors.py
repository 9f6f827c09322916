"""Errors a user can cause (bad config, missing data, wrong checkpoint).

The CLI prints a `UserError` as one line, ``error: <message>``, and exits with status 2, without a
traceback. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error caused by the user's input; its message says what is wrong and what to do."""
