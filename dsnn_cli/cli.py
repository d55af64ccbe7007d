"""The `dsnn` command: dispatches a subcommand to its Hydra entry point.

Only the standard library is imported here so that `dsnn --help` is instant; each
subcommand imports torch when it runs. Hydra owns the rest of ``sys.argv`` (overrides,
``--help``, ``--cfg job``, ``-m``). Errors are reported as one line,
``dsnn: error: ...``, with exit status 2 for usage and config errors and 1 for runtime
errors; ``DSNN_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path

SUBCOMMANDS = {
    "train": "train a model: dsnn train model=lipschitz data=cifar10 trainer.max_epochs=5",
    "attack": "attack a trained run: dsnn attack run=RUN_DIR eps=0.3 attack=autoattack",
    "certify": "certified accuracy of a run on its full test set: dsnn certify run=RUN_DIR",
    "report": "tabulate every run under a directory: dsnn report dir=outputs",
    "sweep": "Hydra multirun of train + attack: dsnn sweep model=resnet,lipschitz",
}

USAGE = """usage: dsnn <command> [hydra overrides...]

Dynamical-systems-based neural networks: train, attack, certify and compare them.

commands:
{commands}

Each command takes Hydra overrides (key=value, group=option) and Hydra's flags:
  dsnn train --help        config groups and their options
  dsnn train --cfg job     print the composed config and exit
  dsnn train -m a=1,2      multirun over a grid

Set DSNN_DEBUG=1 to see the traceback of an error.
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dsnn` script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        commands = "\n".join(f"  {name:<8} {text}" for name, text in SUBCOMMANDS.items())
        print(USAGE.format(commands=commands))
        return 0
    if argv[0] in {"-V", "--version"}:
        from dsnn_cli import __version__

        print(f"dsnn {__version__}")
        return 0
    command, overrides = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        return fail(f"unknown command '{command}' (valid: {', '.join(SUBCOMMANDS)})", 2)
    try:
        refuse_finished_run_dir(overrides)
        overrides = COMMAND_ARGV_REWRITES.get(command, lambda a: a)(overrides)
        run_command(command, overrides)
    except SystemExit as stop:  # Hydra exits after --help / --cfg
        return int(stop.code or 0) if not isinstance(stop.code, str) else fail(stop.code, 2)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM during dsnn train (the run says so)
        return fail(f"interrupted ({stop})" if str(stop) else "interrupted", 130)
    except BaseException as exc:  # noqa: BLE001 - every error becomes one line
        message, code = describe_error(exc)
        if os.environ.get("DSNN_DEBUG"):
            traceback.print_exc()
        return fail(message, code)
    return 0


def run_command(command: str, overrides: list[str]) -> None:
    """Hand argv to the command's ``@hydra.main`` function and let Hydra raise errors."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    module = importlib.import_module(f"dsnn_cli.commands.{command}")
    saved = sys.argv
    from dsnn_cli.commands import FAILURES

    sys.argv = [f"dsnn-{command}", *overrides]
    FAILURES.clear()
    try:
        module.main()
    finally:
        sys.argv = saved
    if FAILURES:
        raise FAILURES.pop()


def sweep_argv(overrides: list[str]) -> list[str]:
    """`sweep.attack=X` chooses the attack group option X (`none` skips the attack);
    `hydra/sweeper=optuna` is dsnn's resumable extension of the plugin's config (the plugin's
    own minimises and restarts its study's job numbers at 0: conf/hydra/sweeper/dsnn_optuna.yaml)."""
    rewritten = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "sweep.attack":
            item = f"attack={value}"
        elif key.lstrip("+") == "hydra/sweeper" and value == "optuna":
            require_optuna_plugin()
            item = f"{key}=dsnn_optuna"
        rewritten.append(item)
    return rewritten


def require_optuna_plugin() -> None:
    import importlib.util

    from dsnn_cli.errors import UsageError

    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        raise UsageError("hydra/sweeper=optuna needs the Optuna sweeper: pip install 'dsnn[tune]'")


def attack_argv(overrides: list[str]) -> list[str]:
    """Without `run=`, the most recent finished run under outputs/ (said on stderr); refuse
    `run=` pointing nowhere before Hydra creates it as its run directory."""
    from dsnn_cli.errors import UsageError
    from dsnn_cli.rundir import latest_finished_run

    runs = [item.partition("=")[2] for item in overrides if item.partition("=")[0] == "run"]
    if not runs and not is_help(overrides):
        latest = latest_finished_run("outputs")
        if latest is None:
            raise UsageError("no finished run under outputs/ to use: give run=RUN_DIR (a dsnn train run)")
        print(f"dsnn: using the most recent finished run, run={latest}", file=sys.stderr)
        return [*overrides, f"run={latest}"]
    for value in runs:
        if not Path(value).expanduser().is_dir():
            raise UsageError(f"run={value} is not a directory; give a run directory written by dsnn train")
    return overrides


def is_help(overrides: list[str]) -> bool:
    return bool({"-h", "--help", "--hydra-help", "--info", "-c", "--cfg", "-i"} & set(overrides))


def train_argv(overrides: list[str]) -> list[str]:
    """A resume keeps the run's own Hydra record (.hydra/ of the first invocation): the run's
    config.yaml already holds what the resumed run continues with. Under torchrun every rank
    must use one run directory (`${now:}` differs between processes), and only rank 0 writes
    Hydra's record and log."""
    keys = {item.partition("=")[0]: item.partition("=")[2] for item in overrides}
    extra = []
    if keys.get("trainer.resume", "").lower() == "true":
        extra.append("hydra.output_subdir=null")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_help(overrides):
        if "hydra.run.dir" not in keys:
            extra.append(f"hydra.run.dir={torchrun_run_dir()}")
        if int(os.environ.get("RANK", "0")) > 0:
            extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return [*overrides, *dict.fromkeys(extra)]


def torchrun_run_dir() -> str:
    """The run directory all ranks of one torchrun job share, named by its rendezvous id."""
    from dsnn_cli.errors import UsageError

    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id == "none":
        raise UsageError(
            "under torchrun without a rendezvous id the ranks cannot agree on a run directory: "
            "give hydra.run.dir=DIR (or use torchrun --standalone)"
        )
    return f"outputs/runs/torchrun/{run_id}"


COMMAND_ARGV_REWRITES = {
    "sweep": sweep_argv,
    "attack": attack_argv,
    "certify": attack_argv,
    "train": train_argv,
}


def refuse_finished_run_dir(overrides: list[str]) -> None:
    """Refuse `hydra.run.dir=DIR` when DIR holds a finished run, before Hydra writes into it."""
    from dsnn_cli.rundir import RunDir

    for item in overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+~") == "hydra.run.dir" and value:
            RunDir(value).refuse_if_finished()


def fail(message: str, code: int) -> int:
    print(f"dsnn: error: {message}", file=sys.stderr)
    return code


def describe_error(exc: BaseException) -> tuple[str, int]:
    """One line and an exit status for any exception that reaches the CLI."""
    from dsnn_cli.errors import DsnnError, describe

    if isinstance(exc, DsnnError):
        return describe(exc)
    hydra_error = describe_hydra_error(exc)
    if hydra_error is not None:
        return hydra_error, 2
    message, code = describe(exc)
    return message + " (set DSNN_DEBUG=1 for the traceback)", code


def describe_hydra_error(exc: BaseException) -> str | None:
    """Config and override errors from Hydra or OmegaConf, rewritten to name the fix."""
    from dsnn_cli.errors import one_line

    try:
        from hydra.errors import (
            ConfigCompositionException,
            HydraException,
            MissingConfigException,
            OverrideParseException,
        )
        from omegaconf.errors import (
            ConfigAttributeError,
            ConfigKeyError,
            MissingMandatoryValue,
            OmegaConfBaseException,
        )
    except ImportError:  # pragma: no cover - hydra is a core dependency
        return None
    if isinstance(exc, MissingConfigException):
        missing = exc.missing_cfg_file or ""
        group, _, option = missing.rpartition("/")
        if exc.options:
            valid = ", ".join(sorted(exc.options))
            return f"unknown {group} option '{option}' (valid: {valid})"
        return one_line(str(exc))
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override '{exc.override}': {one_line(exc.message)}"
    cause = exc.__cause__ if isinstance(exc, ConfigCompositionException) else exc
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        return describe_unknown_key(cause)
    while cause is not None and not isinstance(cause, MissingMandatoryValue) and cause.__cause__ is not None:
        cause = cause.__cause__ if not isinstance(cause, (ConfigKeyError, ConfigAttributeError)) else None
    if isinstance(cause, MissingMandatoryValue):
        key = getattr(cause, "full_key", None) or "a value"
        return f"missing required value '{key}': give it on the command line ({key}=...)"
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        text = str(exc).strip() or (str(exc.__cause__) if exc.__cause__ is not None else "")
        return one_line(text or type(exc).__name__)
    return None


def describe_unknown_key(error: BaseException) -> str:
    full_key = getattr(error, "full_key", None) or getattr(error, "key", "?")
    parent = getattr(error, "parent_node", None)
    valid = ""
    try:
        if parent is not None:
            valid = f" (valid keys: {', '.join(str(k) for k in parent.keys())})"
    except Exception:  # noqa: BLE001 - listing keys is best effort
        valid = ""
    return f"unknown config key '{full_key}'{valid}; add it with +{full_key}=... if intended"


if __name__ == "__main__":
    raise SystemExit(main())
