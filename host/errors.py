"""Exceptions the host raises for bad input: the CLI reports these without a traceback."""

from __future__ import annotations


class TickwireError(Exception):
    """Base of every tickwire error caused by input (a file, an argument, a value, the card).

    The ``tickwire`` command prints ``tickwire: error: <message>`` for these and exits with 2, so
    the message must stand on its own: say which file, register or value is wrong and why.
    """
