"""`dsnn sweep`: one train + attack job per grid point, and the sweep's report at the end.

A failed job is recorded (``status: failed`` in its summary) and does not stop the others.
Running the same sweep again into the same ``hydra.sweep.dir`` skips finished jobs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dsnn_cli.rundir import RunDir, read_json

log = logging.getLogger("dsnn.sweep")


def attack_done(output_dir: Path, cfg: DictConfig) -> bool:
    from dsnn_cli.certify import parse_eps
    from dsnn_cli.evaluate import attack_path

    if cfg.attack.name == "none":
        return True
    record = read_json(attack_path(output_dir, cfg.attack.name))
    if not record:
        return False
    have = {round(r["eps"], 12) for r in record.get("results", [])}
    return all(round(eps, 12) in have for eps in parse_eps(cfg.sweep.eps))


def run_sweep_job(cfg: DictConfig, output_dir: Path) -> dict[str, Any] | None:
    """Train, then attack, one grid point; errors are logged and recorded, not raised."""
    from dsnn_cli.cli import describe_error
    from dsnn_cli.evaluate import run_attack
    from dsnn_cli.train import run_train

    run = RunDir(output_dir)
    if run.status() == "done" and attack_done(output_dir, cfg):
        log.info("job %s is finished; skipping it", output_dir)
        return run.summary
    try:
        if run.status() != "done":
            run_train(cfg, output_dir)
        if cfg.attack.name != "none":
            run_attack(
                {
                    "run": str(output_dir),
                    "eps": cfg.sweep.eps,
                    "attack": cfg.attack,
                    "device": cfg.trainer.device,
                    "progress": cfg.trainer.get("progress"),
                }
            )
    except Exception as exc:  # noqa: BLE001 - one failed job must not stop the sweep
        message, _ = describe_error(exc)
        log.error("job %s failed: %s", output_dir, message)
        run = RunDir(output_dir)
        if run.summary and run.status() != "failed":
            run.update(attack_error=message)
        elif not run.summary:
            output_dir.mkdir(parents=True, exist_ok=True)
            run.summary = {"status": "failed", "error": message}
            run.write()
    return RunDir(output_dir).summary


class SweepReport(Callback):
    """Hydra callback: report the sweep directory once every job has run."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dsnn_cli.report import run_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            run_report(sweep_dir)
