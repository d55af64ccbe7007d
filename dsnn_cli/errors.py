"""Errors the user can act on: the CLI prints them as one line, never a traceback."""

from __future__ import annotations


class DsnnError(Exception):
    """A runtime failure with a message that names the fix (exit status 1)."""

    exit_code = 1


class UsageError(DsnnError):
    """Bad input: an unknown option, a value out of range, a missing path (exit status 2)."""

    exit_code = 2
