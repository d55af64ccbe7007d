"""Live metrics: the `logger` group (jsonl, csv, tensorboard, mlflow), after Lightning-Hydra's.

`metrics.jsonl` is always written by the training loop (it is the run's record, resumption
reads it); a logger adds a view of the same numbers: per step (the training loss), per epoch
(every metric of the row), and at the end the config as hyperparameters with the final
figures. Optional back ends are imported only when chosen.

MLflow keeps one MLflow run per run directory: `mlflow.json` in the run directory names it,
so a resumed run logs into the same MLflow run, and `dsnn attack`, `dsnn certify` and
`dsnn report` on that directory add their figures and pictures to it (`TrackedRun`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dsnn_cli.config import setting, to_plain
from dsnn_cli.errors import UsageError
from dsnn_cli.registry import Registry
from dsnn_cli.rundir import RunDir, atomic_write_text

LOGGERS: Registry[type] = Registry("logger")
MLFLOW_RECORD = "mlflow.json"  # in a run directory: the tracking URI and the MLflow run's id
DEFAULT_TRACKING_URI = "sqlite:///outputs/mlflow.db"  # relative to where dsnn runs
MLFLOW_PARAM_LIMIT = 6000  # characters of a parameter value MLflow stores
MLFLOW_BATCH = 100  # parameters or tags per log_batch call

log = logging.getLogger("dsnn")


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


@LOGGERS.register("mlflow")
class MlflowLogger(MetricLogger):
    """One MLflow run per run directory (resumed runs included): the config as flat parameters,
    train/* per step, epoch/* per epoch, final/* figures, config.yaml and summary.json."""

    def __init__(self, run: RunDir, cfg: Mapping[str, Any]) -> None:
        super().__init__(run, cfg)
        self.every = setting(cfg, "log_every_n_steps", int, "logger", low=1)
        self.tracking_uri = absolute_tracking_uri(cfg.get("tracking_uri") or DEFAULT_TRACKING_URI)
        self.experiment = setting(cfg, "experiment_name", str, "logger")
        self.tracked: TrackedRun | None = None
        self.finished = False
        self.logged_step = -1  # a resumed run redoes the steps after its checkpoint (bit for bit):
        self.logged_epoch = 0  # they are not logged twice; epochs come from metrics.jsonl in order

    def start(self, config: Mapping[str, Any]) -> None:
        self.tracked = TrackedRun.of(self.run.path)
        if self.tracked is None:
            self.tracked = TrackedRun.create(self.run.path, self.tracking_uri, self.experiment)
            self.tracked.log_params(hyperparameters(config))
        else:  # a resumed run: the same MLflow run goes on
            self.tracked.client.update_run(self.tracked.run_id, status="RUNNING")
            self.logged_step = self.tracked.last_step("train/")
            self.logged_epoch = max(self.tracked.last_step("epoch/"), 0)

    def step(self, step: int, scalars: Mapping[str, float]) -> None:
        if self.tracked is not None and step % self.every == 0 and step > self.logged_step:
            self.tracked.log_metrics({f"train/{key}": value for key, value in scalars.items()}, step)
            self.logged_step = step

    def epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        """Every checkpointed epoch not logged yet (the loop calls this after the checkpoint)."""
        if self.tracked is None:
            return
        for done in self.run.metrics():
            if isinstance(done.get("epoch"), int) and self.logged_epoch < done["epoch"] <= epoch:
                metrics = {f"epoch/{key}": value for key, value in done.items() if key != "epoch"}
                self.tracked.log_metrics(metrics, done["epoch"])
                self.logged_epoch = done["epoch"]

    def finish(self, summary: Mapping[str, Any]) -> None:
        if self.tracked is None:
            return
        figures = final_figures(summary)
        self.tracked.log_metrics({key.replace("@", "/"): value for key, value in figures.items()})
        self.tracked.log_artifacts([self.run.path / "config.yaml", self.run.path / "summary.json"])
        self.tracked.client.set_terminated(self.tracked.run_id, "FINISHED")
        self.finished = True

    def close(self) -> None:
        if self.tracked is not None and not self.finished:  # an error, Ctrl-C or SIGTERM
            status = "KILLED" if self.run.summary.get("status") == "interrupted" else "FAILED"
            self.tracked.client.set_terminated(self.tracked.run_id, status)


class TrackedRun:
    """The MLflow run of a run directory (named by its mlflow.json), for the logger and for the
    commands that add figures to a run later."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    @classmethod
    def of(cls, run_dir: Path) -> TrackedRun | None:
        """The run directory's MLflow run, or None if it has none (or MLflow is not installed)."""
        path = Path(run_dir) / MLFLOW_RECORD
        if not path.is_file():
            return None
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            log.warning("%s names an MLflow run, but mlflow is not installed: not logged there", path)
            return None
        record = json.loads(path.read_text())
        return cls(MlflowClient(tracking_uri=record["tracking_uri"]), record["run_id"])

    @classmethod
    def create(cls, run_dir: Path, tracking_uri: str, experiment: str) -> TrackedRun:
        """A new MLflow run for `run_dir`, tagged with it, recorded in its mlflow.json."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found is not None
            else client.create_experiment(experiment, artifact_location=artifact_location(tracking_uri))
        )
        run_dir = Path(run_dir).resolve()
        created = client.create_run(experiment_id, tags={"dsnn.run_dir": str(run_dir)}, run_name=run_dir.name)
        record = {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "run_id": created.info.run_id}
        atomic_write_text(run_dir / MLFLOW_RECORD, json.dumps(record, indent=2) + "\n")
        return cls(client, created.info.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:MLFLOW_PARAM_LIMIT]) for key, value in params.items()]
        for start in range(0, len(items), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + MLFLOW_BATCH])

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """Numeric values only (None, text and booleans are left out)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        for start in range(0, len(items), 10 * MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=items[start : start + 10 * MLFLOW_BATCH])

    def last_step(self, prefix: str) -> int:
        """The largest step logged under any metric whose name starts with `prefix` (-1: none)."""
        keys = [key for key in self.client.get_run(self.run_id).data.metrics if key.startswith(prefix)]
        steps = [m.step for key in keys for m in self.client.get_metric_history(self.run_id, key)]
        return max(steps, default=-1)

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path), artifact_path)


SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The file of a SQLite tracking URI, or None for another store (a tracking server)."""
    return Path(uri[len(SQLITE) :]) if uri.startswith(SQLITE) else None


def absolute_tracking_uri(uri: str) -> str:
    """A SQLite URI with an absolute path (its folder created), so that later commands run from
    anywhere find the same store; other URIs (a tracking server) as given."""
    path = sqlite_path(uri)
    if path is None:
        return uri
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return SQLITE + str(path)


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a SQLite store (its folder's mlartifacts/); a server chooses its own."""
    path = sqlite_path(tracking_uri)
    return None if path is None else (path.parent / "mlartifacts").as_uri()


def log_to_tracked_run(run_dir: Path, metrics: Mapping[str, Any], artifacts: Iterable[Path] = ()) -> None:
    """Add figures (and files) of a later command to the run directory's MLflow run, if it has one."""
    tracked = TrackedRun.of(run_dir)
    if tracked is not None:
        tracked.log_metrics(metrics)
        tracked.log_artifacts(artifacts, "report" if artifacts else None)


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
    if kind is MlflowLogger:
        setting(cfg, "log_every_n_steps", int, "logger", low=1)
        setting(cfg, "experiment_name", str, "logger")
        setting(cfg, "tracking_uri", str, "logger", nullable=True)
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise UsageError("logger=mlflow needs the mlflow package: pip install 'dsnn[mlflow]'") from None
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
        for key in (
            "test_acc",
            "test_mse",
            "val_acc",
            "lipschitz_bound",
            "images_per_second",
            "peak_memory_mb",
        )
        if isinstance(summary.get(key), (int, float))
    }
    for eps, value in (summary.get("certified") or {}).items():
        figures[f"final/certified@{eps}"] = float(value)
    return figures
