"""dsnn's resumable Optuna sweeper, where Hydra looks for plugins.

Hydra instantiates a sweeper only from classes its plugin scan finds in the `hydra_plugins`
namespace package; the work is done by `dsnn_cli.commands.tuning.StudySweeper`, imported on
first use, so that the scan at every `dsnn` start imports neither Optuna nor the optional
hydra-optuna-sweeper (the same split as that plugin's own OptunaSweeper).
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper


class DsnnOptunaSweeper(Sweeper):
    """`hydra/sweeper=optuna` in dsnn (conf/hydra/sweeper/dsnn_optuna.yaml)."""

    def __init__(self, **settings: Any) -> None:
        from dsnn_cli.commands.tuning import StudySweeper

        self.sweeper = StudySweeper(**settings)

    def setup(self, **kwargs: Any) -> None:
        self.sweeper.setup(**kwargs)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)
