"""Errors a user can cause (bad flags, missing or corrupt files, mismatched checkpoints).

The CLI catches :class:`UserError`, prints its message on one line and exits with code 2.
Library code raises it for anything that is the caller's input, never for internal bugs.
"""


class UserError(Exception):
    """A problem with the user's input; the message is shown as-is on one line."""


def require(cond: bool, msg: str) -> None:
    """Raise `UserError(msg)` unless `cond` (the config sections' validation)."""
    if not cond:
        raise UserError(msg)
