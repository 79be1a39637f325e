"""``InputError``: the one exception type for mistakes the caller can fix.

A value out of range, a wrong shape, an unknown name, a missing or unreadable file, an output
folder that cannot be written: anything where the message alone tells the user what to change.
The ``pydiff`` command line prints an ``InputError`` as one line and exits with status 2; any
other exception is a bug in pydiff and keeps its traceback (status 1).

It subclasses ``ValueError`` so that code which catches ``ValueError`` around pydiff calls keeps
working. The command line does not treat every ``ValueError`` as a user error: Python raises
``ValueError`` for internal mistakes too (a bad unpacking, ``int("x")``), and hiding those
tracebacks would hide bugs. Wrong *types* passed to the Python API stay ``TypeError`` (the
command line never passes a wrong type: argparse converts every option).

Example:
    >>> import pydiff
    >>> try:
    ...     pydiff.get_solver("no_such_solver")
    ... except pydiff.InputError as err:
    ...     print(type(err).__name__, isinstance(err, ValueError))
    InputError True
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the caller: the message names the argument or file and what is expected."""


__all__ = ["InputError"]
