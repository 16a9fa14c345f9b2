"""Errors a user can cause (bad input files, unsupported models).

The CLI prints any `LpucError` as one line and exits with code 2; anything else
is a bug in lpuc and keeps its traceback.
"""


class LpucError(Exception):
    """Base class of every user-facing error."""


class ParseError(LpucError):
    """IR text that does not follow the grammar; the message carries file:line:column."""


class VerifyError(LpucError):
    """A module that breaks an IR rule; the message names the op and the value."""


class EvalError(LpucError):
    """A failure while evaluating a module; the message names the failing op."""
