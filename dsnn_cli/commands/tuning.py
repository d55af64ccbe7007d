"""`dsnn sweep hydra/sweeper=optuna`: the official Optuna sweeper, made resumable.

The plugin (hydra-optuna-sweeper) asks Optuna for trials, launches each as a job and tells
Optuna the job's return value (here `sweep.objective`, a validation figure, maximised). Its
own loop runs `n_trials` more trials on every start and numbers jobs from 0, so a sweep
restarted after a kill would overwrite its first jobs and leave the killed trial RUNNING in
the study forever. `StudySweeper` keeps the plugin's search-space parsing and samplers and
changes the loop:

- the study lives in SQLite in the sweep directory (`hydra.sweeper.storage`);
- job k is trial k (`hydra.sweep.dir/k`), so a job directory belongs to one trial for good;
- on start, a trial a killed sweep left RUNNING is run again in its own directory (its run
  resumes from its last checkpoint, a finished job is only scored) and then told;
- new trials are asked until the study holds `n_trials` finished ones (complete or failed),
  so rerunning the same command continues the study and never runs a trial twice;
- a study is tied to its objective and search space: another one is refused in one line.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from dsnn_cli.commands.objectives import parse_objective
from dsnn_cli.errors import UsageError

log = logging.getLogger("dsnn.sweep")

FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
MISSING_KEY = object()


class StudySweeper(OptunaSweeperImpl):
    """Hydra's Optuna sweeper with a study that survives kills and reruns (module docstring)."""

    def sweep(self, arguments: list[str]) -> None:
        objective = parse_objective(OmegaConf.select(self.config, "sweep.objective"))
        self._process_searchspace_config()
        distributions, fixed = search_space(self._parse_sweeper_params_config() + list(arguments))
        check_keys(self.config, list(distributions), self.hydra_context.config_loader.get_group_options)
        if not distributions:
            raise UsageError(
                "hydra/sweeper=optuna has nothing to search: give ranges in Hydra's sweep syntax, "
                "e.g. loss.eps='interval(0.02,0.2)' model.activation.alpha='choice(0.05,0.1)'"
            )
        self.grid_sampler_choices(distributions)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)  # the SQLite file's home
        logging.getLogger("alembic").setLevel(logging.WARNING)  # Optuna's schema set-up, line by line
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials are logged here, once each
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=self.sampler,
            direction=str(self.direction.name if hasattr(self.direction, "name") else self.direction),
            load_if_exists=True,
        )
        tie_study(study, objective.text, distributions, self.storage)
        log.info(
            "study %s in %s: %d of %d trials finished",
            study.study_name,
            self.storage,
            finished(study),
            self.n_trials,
        )
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            log.info("trial %d was cut off by a kill: running it again in its job directory", trial.number)
            self.run_trial(study, trial.number, trial_overrides(trial.params, fixed))
        while finished(study) < self.n_trials:
            trial = study.ask()
            self.run_trial(study, trial.number, self._configure_trials([trial], distributions, fixed)[0])
        write_results(study, fixed, f"{self.config.hydra.sweep.dir}/optimization_results.yaml")

    def run_trial(self, study: optuna.Study, number: int, overrides) -> None:
        """Launch trial `number` as job `number` and tell the study its objective (or failure)."""
        (job,) = self.launcher.launch([tuple(overrides)], initial_job_idx=number)
        try:
            value = job.return_value
        except Exception as exc:  # noqa: BLE001 - a failed job fails its trial, not the study
            log.error("trial %d failed: %s", number, exc)
            value = None
        if value is None:
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, float(value))
            log.info("trial %d: objective %.6g (best so far %.6g)", number, float(value), study.best_value)

    def grid_sampler_choices(self, distributions: dict) -> None:
        """The plugin's grid sampler: every point of a discrete space, n_trials at most its size."""
        sampler = self.sampler
        if isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler:
            grid = {name: self._to_grid_sampler_choices(d) for name, d in distributions.items()}
            self.sampler = sampler(grid)
            size = 1
            for choices in grid.values():
                size *= len(choices)
            self.n_trials = min(self.n_trials, size)


def search_space(arguments: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The searched keys with their Optuna distributions, and the fixed overrides; a malformed
    range is one line naming Hydra's sweep syntax."""
    try:
        return create_params_from_overrides(arguments)
    except Exception as exc:  # noqa: BLE001 - the parser's and Optuna's many error types
        raise UsageError(
            f"hydra/sweeper=optuna: bad search space ({str(exc).splitlines()[0] or type(exc).__name__}); "
            "write ranges as key='interval(LOW,HIGH)', key='int(interval(1,8))', key='choice(a,b)' "
            "or key='tag(log,interval(1e-4,1e-1))'"
        ) from None


def check_keys(config, keys: list[str], group_options) -> None:
    """Refuse a searched key that is neither in the composed config nor a config group (before
    any trial runs); `group_options(name)` lists a group's options ([] for no group)."""
    for key in keys:
        name = key.lstrip("+~")
        if name != key or name.startswith("hydra") or group_options(name):
            continue
        if OmegaConf.select(config, name, default=MISSING_KEY) is MISSING_KEY:
            raise UsageError(f"hydra/sweeper=optuna: the config has no key '{name}' to search over")


def tie_study(study: optuna.Study, objective: str, distributions: dict, storage: Any) -> None:
    """Record the objective and search space in a new study; refuse to continue a study that
    maximised something else or searched another space."""
    space = {name: distribution_to_json(d) for name, d in sorted(distributions.items())}
    attrs = study.user_attrs
    if "dsnn_objective" not in attrs:
        study.set_user_attr("dsnn_objective", objective)
        study.set_user_attr("dsnn_search_space", space)
        return
    if attrs["dsnn_objective"] != objective or attrs["dsnn_search_space"] != space:
        raise UsageError(
            f"the study in {storage} maximises {attrs['dsnn_objective']} over "
            f"{', '.join(attrs['dsnn_search_space'])}, not {objective} over {', '.join(space)}: "
            "continue it with the same objective and ranges, or give another hydra.sweep.dir"
        )


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def trial_overrides(params: dict[str, Any], fixed: dict[str, Any]) -> tuple[str, ...]:
    """A trial's overrides as the plugin writes them: its sampled values, then the fixed ones."""
    return tuple(f"{name}={value}" for name, value in {**params, **fixed}.items())


def write_results(study: optuna.Study, fixed: dict[str, Any], path: str) -> None:
    """optimization_results.yaml as the plugin writes it, with the best trial's overrides."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return
    best = study.best_trial
    results = {
        "name": "optuna",
        "best_trial": best.number,
        "best_params": best.params,
        "best_value": best.value,
        "best_overrides": list(trial_overrides(best.params, fixed)),
        "complete_trials": len(complete),
    }
    OmegaConf.save(OmegaConf.create(results), path)
