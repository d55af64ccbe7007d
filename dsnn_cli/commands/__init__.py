"""Hydra entry points, one per subcommand; each only hands its config to the library.

`guarded` keeps an error raised inside a job away from Hydra, which would print its own
multi-line report; the dispatcher in `dsnn_cli.cli` re-raises it and prints one line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

FAILURES: list[BaseException] = []


def guarded(task: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(task)
    def run(cfg: Any) -> None:
        try:
            task(cfg)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the dispatcher
            FAILURES.append(exc)

    return run
