"""Errors the user can act on: the CLI prints them as one line, never a traceback."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class DsnnError(Exception):
    """A runtime failure with a message that names the fix (exit status 1)."""

    exit_code = 1


class UsageError(DsnnError):
    """Bad input: an unknown option, a value out of range, a missing path (exit status 2)."""

    exit_code = 2


def one_line(text: str) -> str:
    """The first three non-blank lines of `text`, joined: what a record or a terminal line holds."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else "unknown error"


def describe(exc: BaseException) -> tuple[str, int]:
    """One line and an exit status for an exception raised while a command runs."""
    if isinstance(exc, DsnnError):
        return one_line(str(exc)), exc.exit_code
    return one_line(f"{type(exc).__name__}: {exc}"), 1


class Interrupted(KeyboardInterrupt):
    """SIGTERM (what `kill` and SLURM's preemption send), raised where the process is, as Ctrl-C
    raises KeyboardInterrupt: the command records the run as interrupted before it exits."""


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises Interrupted (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):  # noqa: ARG001 - the signal module's signature
        raise Interrupted("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
