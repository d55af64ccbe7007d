"""Hydra entry points, one per subcommand; each only hands its config to the library.

`guarded` keeps an error raised inside a job away from Hydra, which would print its own
multi-line report; the dispatcher in `dsnn_cli.cli` re-raises it and prints one line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

FAILURES: list[BaseException] = []


def guarded(task: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The task's return value (a sweeper such as Optuna's reads it), or None after an error."""

    @functools.wraps(task)
    def run(cfg: Any) -> Any:
        try:
            return task(cfg)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the dispatcher
            FAILURES.append(exc)
            return None

    return run
