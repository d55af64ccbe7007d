"""Live metrics: the `logger` group (jsonl, csv, tensorboard), after Lightning-Hydra's loggers.

`metrics.jsonl` is always written by the training loop (it is the run's record, resumption
reads it); a logger adds a view of the same numbers: per step (the training loss), per epoch
(every metric of the row), and at the end the config as hyperparameters with the final
figures. Optional back ends are imported only when chosen.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

from dsnn_cli.config import setting, to_plain
from dsnn_cli.errors import UsageError
from dsnn_cli.registry import Registry
from dsnn_cli.rundir import RunDir, atomic_write_text

LOGGERS: Registry[type] = Registry("logger")


@LOGGERS.register("jsonl")
class MetricLogger:
    """The base logger: metrics.jsonl only, which the loop writes itself."""

    def __init__(self, run: RunDir, cfg: Mapping[str, Any]) -> None:
        self.run = run

    def start(self, config: Mapping[str, Any]) -> None:
        """Once, before the first epoch (again after a resume)."""

    def step(self, step: int, scalars: Mapping[str, float]) -> None:
        """Every optimisation step (the logger decides how often to keep one)."""

    def epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        """After every epoch's row has been appended to metrics.jsonl."""

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Once, with the finished run's summary (test, certified and bound figures)."""

    def close(self) -> None:
        """Always, also after an error."""


@LOGGERS.register("csv")
class CsvLogger(MetricLogger):
    """metrics.csv: every metrics.jsonl row, columns in order of first appearance."""

    def epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        rows = self.run.metrics()
        columns = list(dict.fromkeys(key for r in rows for key in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.run.path / "metrics.csv", buffer.getvalue())


@LOGGERS.register("tensorboard")
class TensorBoardLogger(MetricLogger):
    """Event files in RUN_DIR/tensorboard (train/loss per step, epoch/* per epoch, hparams)."""

    def __init__(self, run: RunDir, cfg: Mapping[str, Any]) -> None:
        super().__init__(run, cfg)
        self.every = setting(cfg, "log_every_n_steps", int, "logger", low=1)
        self.writer = None
        self.config: dict[str, Any] = {}

    def start(self, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run.path / "tensorboard"))
        self.config = hyperparameters(config)

    def step(self, step: int, scalars: Mapping[str, float]) -> None:
        if self.writer is not None and step % self.every == 0:
            for key, value in scalars.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.writer.flush()

    def finish(self, summary: Mapping[str, Any]) -> None:
        if self.writer is not None:
            self.writer.add_hparams(self.config, final_figures(summary), run_name=".")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def check_logger_config(cfg: Mapping[str, Any]) -> type[MetricLogger]:
    """The chosen logger class, its settings checked; a back end that is not installed is a
    one-line usage error (before any data is read or a run directory is written)."""
    cfg = to_plain(cfg)
    kind = LOGGERS[setting(cfg, "name", str, "logger")]
    if kind is TensorBoardLogger:
        setting(cfg, "log_every_n_steps", int, "logger", low=1)
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UsageError(
                "logger=tensorboard needs the tensorboard package: pip install 'dsnn[tensorboard]'"
            ) from None
    return kind


def build_logger(cfg: Mapping[str, Any], run: RunDir) -> MetricLogger:
    return check_logger_config(cfg)(run, to_plain(cfg))


def hyperparameters(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config flattened to the scalar types TensorBoard's hparams accept (lists as text)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name == "hydra":
            continue
        if isinstance(value, Mapping):
            flat.update(hyperparameters(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def final_figures(summary: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of a finished run, as hparams metrics."""
    figures = {
        f"final/{key}": float(summary[key])
        for key in ("test_acc", "test_mse", "lipschitz_bound", "peak_memory_mb")
        if isinstance(summary.get(key), (int, float))
    }
    for eps, value in (summary.get("certified") or {}).items():
        figures[f"final/certified@{eps}"] = float(value)
    return figures
