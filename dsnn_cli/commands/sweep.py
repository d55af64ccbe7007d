"""`dsnn sweep`: one train + attack job per grid point, and the sweep's report at the end.

A failed job is recorded (``status: failed`` in its summary) and does not stop the others.
Running the same sweep again into the same ``hydra.sweep.dir`` skips finished jobs. With
`sweep.objective` each job also scores that validation figure and returns it: what
`hydra/sweeper=optuna` (commands/tuning.py) maximises.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

from dsnn_cli.commands import FAILURES, guarded
from dsnn_cli.config import to_plain
from dsnn_cli.devices import job_device
from dsnn_cli.distributed import current_world
from dsnn_cli.errors import DsnnError, UsageError, describe
from dsnn_cli.rundir import RunDir, read_json

log = logging.getLogger("dsnn.sweep")


def attack_preset(name: str) -> dict[str, Any]:
    """The attack group's option `name` as Hydra composes it, for the extra attacks of a sweep."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    def composed() -> dict[str, Any]:
        return to_plain(compose(overrides=[f"+attack={name}"]).attack)

    try:
        if GlobalHydra.instance().is_initialized():  # inside the sweep's own Hydra app
            return composed()
        with initialize_config_module(config_module="dsnn_cli.conf", version_base="1.3"):
            return composed()
    except MissingConfigException as exc:
        valid = ", ".join(sorted(exc.options or []))
        raise UsageError(f"sweep.extra_attacks: unknown attack '{name}' (valid: {valid})") from None


def sweep_attacks(cfg: DictConfig) -> list[dict[str, Any]]:
    """The attack group's settings, then every `sweep.extra_attacks` preset (e.g. the paper's)."""
    attacks = [] if cfg.attack.name == "none" else [to_plain(cfg.attack)]
    overrides = dict(cfg.sweep["extra_attack_overrides"] or {})
    for name in cfg.sweep["extra_attacks"] or []:
        preset = attack_preset(str(name))
        attacks.append({**preset, **{k: v for k, v in overrides.items() if k in preset}})
    return attacks


def attack_done(output_dir: Path, attack: dict[str, Any], eps_values) -> bool:
    from dsnn_cli.commands.attack import attack_path
    from dsnn_cli.robustness.certificates import parse_eps

    record = read_json(attack_path(output_dir, attack["name"]))
    if not record:
        return False
    have = {round(r["eps"], 12) for r in record.get("results", [])}
    return all(round(eps, 12) in have for eps in parse_eps(eps_values))


def run_sweep_job(cfg: DictConfig, output_dir: Path, job: int = 0) -> dict[str, Any] | None:
    """Train, then attack, one grid point (the sweep's job number `job`); errors are logged and
    recorded, not raised.

    A job whose run is done and whose attack files cover `sweep.eps` is skipped, so running
    a sweep again into the same directory trains and attacks only what is missing. On a
    machine with several GPUs, `trainer.device` auto or cuda puts job k on GPU k mod count,
    so parallel jobs (hydra/launcher=joblib) share the GPUs.
    """
    from dsnn_cli.commands.attack import run_attack
    from dsnn_cli.commands.train import run_train

    device = job_device(cfg.trainer.device, job)
    if device != cfg.trainer.device:
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.trainer.device = device
    run = RunDir(output_dir)
    if not current_world().main:  # another rank of a data-parallel job: train only, write nothing
        run_train(resume_if_started(cfg, run), output_dir)
        return None
    try:
        attacks = sweep_attacks(cfg)
        todo = [a for a in attacks if not attack_done(output_dir, a, cfg.sweep.eps)]
        if run.status() == "done" and not todo:
            log.info("job %s is finished; skipping it", output_dir)
            return run.summary
        if run.status() != "done":
            run_train(resume_if_started(cfg, run), output_dir)
        for attack in todo:
            run_attack(
                {
                    "run": str(output_dir),
                    "eps": cfg.sweep.eps,
                    "attack": attack,
                    "device": cfg.trainer.device,
                    "progress": cfg.trainer.progress,
                    "data_root": None,
                }
            )
    except Exception as exc:  # noqa: BLE001 - one failed job must not stop the sweep
        message, _ = describe(exc)
        log.error("job %s failed: %s", output_dir, message)
        run = RunDir(output_dir)
        if run.summary and run.status() != "failed":
            run.update(attack_error=message)
        elif not run.summary:
            output_dir.mkdir(parents=True, exist_ok=True)
            run.summary = {"status": "failed", "error": message}
            run.write()
    return RunDir(output_dir).summary


def resume_if_started(cfg: DictConfig, run: RunDir) -> DictConfig:
    """A job that an earlier sweep started (interrupted, killed, failed) continues from its last
    checkpoint instead of training again from scratch."""
    if not run.started():
        return cfg
    log.info("job %s has checkpoints (status %s): resuming it", run.path, run.live_status())
    resumed = cfg.copy()
    with open_dict(resumed):
        resumed.trainer.resume = True
    return resumed


class SweepReport(Callback):
    """Hydra callback: report the sweep directory once every job has run."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dsnn_cli.commands.report import run_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            run_report(sweep_dir)
            failed = unfinished_jobs(sweep_dir)
            if failed:
                # Hydra turns an exception raised in a callback into a warning: hand it to the
                # dispatcher, which exits 1 with one line, as for an error inside a job.
                FAILURES.append(DsnnError(unfinished_jobs_message(sweep_dir, failed)))


def unfinished_jobs(sweep_dir: Path) -> list[str]:
    """The jobs of a sweep whose training or attack did not finish."""
    return sorted(
        job.parent.name
        for job in sweep_dir.glob("*/summary.json")
        if isinstance(summary := read_json(job), dict)
        and (summary.get("status") != "done" or summary.get("attack_error"))
    )


def unfinished_jobs_message(sweep_dir: Path, failed: list[str]) -> str:
    retry = (
        "the study keeps them as failed trials: rerun with a larger hydra.sweeper.n_trials for others"
        if (sweep_dir / "study.db").is_file()
        else "rerun the sweep into the same hydra.sweep.dir to retry them"
    )
    return (
        f"{len(failed)} job(s) of the sweep in {sweep_dir} did not finish: {', '.join(failed)} "
        f"(their summary.json says why; the report covers the others); {retry}"
    )


def job_objective(cfg: DictConfig, objective, output_dir: Path, overrides: list[str]) -> float | None:
    """The job's `objective` on its validation split (None without one, or when the job did not
    finish): what `hydra/sweeper=optuna` maximises, recorded in summary.json."""
    from dsnn_cli.commands.objectives import record_objective

    if objective is None or not current_world().main:
        return None
    return record_objective(output_dir, objective, overrides, cfg.sweep.objective_points)


def register_optuna_sweeper() -> None:
    """Make `hydra/sweeper=optuna` (hydra_plugins.dsnn_optuna_sweeper) known to Hydra: its plugin
    scan walks installed packages only, and misses an editable install's (`make install`)."""
    from hydra.core.plugins import Plugins

    try:
        from hydra_plugins.dsnn_optuna_sweeper import DsnnOptunaSweeper
    except ImportError:  # dsnn installed without its hydra_plugins package
        return
    Plugins.instance().register(DsnnOptunaSweeper)


register_optuna_sweeper()


@hydra.main(version_base="1.3", config_path="pkg://dsnn_cli.conf", config_name="sweep")
@guarded
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point of `dsnn sweep`: runs the job, returns its objective (if any)."""
    from hydra.core.hydra_config import HydraConfig

    from dsnn_cli.commands.objectives import parse_objective

    # parsed before training: a bad objective stops the job before it trains
    objective = None if cfg.sweep.objective is None else parse_objective(cfg.sweep.objective)
    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    run_sweep_job(cfg, output_dir, int(hydra_config.job.get("num") or 0))
    return job_objective(cfg, objective, output_dir, list(hydra_config.overrides.task))
