"""`dsnn train`: build data and model from the config, fit, then evaluate once on the test set."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from dsnn_cli.commands import guarded
from dsnn_cli.config import setting, to_plain
from dsnn_cli.console import eps_label, percent, print_table
from dsnn_cli.data.containers import ImageData, VectorData
from dsnn_cli.data.loading import batches, check_data_config, load_data
from dsnn_cli.devices import (
    exact_float32,
    keep_freed_memory,
    memory_format,
    peak_memory_mb,
    resolve_device,
    training_precision,
)
from dsnn_cli.distributed import current_world, join, leave, main_first
from dsnn_cli.errors import UsageError, describe, sigterm_interrupts
from dsnn_cli.models.inference import predict
from dsnn_cli.models.networks import build_model, check_model_config
from dsnn_cli.robustness.attacks import fast_gradient
from dsnn_cli.robustness.certificates import certify, lipschitz_bound, parse_eps
from dsnn_cli.robustness.structure import flow_map_metrics
from dsnn_cli.rundir import CONFIG, RunDir
from dsnn_cli.training.checkpoint import BEST, FINAL, LAST, find_checkpoint, load_checkpoint, save_checkpoint
from dsnn_cli.training.loggers import build_logger, check_logger_config
from dsnn_cli.training.loop import Recipe, TrainerConfig, fit, make_task
from dsnn_cli.training.resumption import resumed_config

log = logging.getLogger("dsnn.train")


@dataclass(frozen=True)
class TrainSettings:
    """A `dsnn train` config checked once, at the command's boundary, before any data is read."""

    trainer: TrainerConfig
    recipe: Recipe
    model: dict[str, Any]
    data: dict[str, Any]
    certify_eps: list[float]
    logger: dict[str, Any]

    @classmethod
    def from_config(cls, cfg: DictConfig) -> TrainSettings:
        data = check_data_config(cfg.data)
        loss = to_plain(cfg.loss)
        adversarial = loss.get("adversarial") or {"eps": None, "start": 0.0}  # regression losses: none
        if not isinstance(adversarial, dict):
            raise UsageError(
                f"loss.adversarial={adversarial} is not valid: it is a group, set loss.adversarial.eps=... "
                "and loss.adversarial.start=..."
            )
        recipe = Recipe(
            loss=loss,
            optim=to_plain(cfg.optim),
            scheduler=to_plain(cfg.scheduler),
            seed=setting(cfg, "seed", int, ""),
            augment=data.get("augment", "none"),  # vector data: none
            adversary=adversary(
                setting(adversarial, "eps", float, "loss.adversarial", low=0, low_open=True, nullable=True)
            ),
            adversarial_start=setting(adversarial, "start", float, "loss.adversarial", low=0, high=1),
        )
        recipe.check()
        model = to_plain(cfg.model)
        check_model_config(model)
        logger = to_plain(cfg.logger)
        check_logger_config(logger)
        trainer = TrainerConfig.from_config(cfg.trainer)
        return cls(trainer, recipe, model, data, parse_eps(cfg.certify.eps), logger)


def adversary(eps: float | None):
    """The perturbation free adversarial training replays: the l2 fast gradient step at eps
    (None: no replay)."""
    return None if eps is None else functools.partial(fast_gradient, eps=eps)


def run_train(cfg: DictConfig, output_dir: Path | str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train one model into `output_dir` and return its summary.

    With `trainer.resume=true` on a started run, the run's own config.yaml is the config:
    `overrides` (the command line's; None: every key of `cfg`) may change only RESUMABLE keys.

    Raises:
        UsageError: bad config (unknown option, a value of the wrong type or range, step sizes
            outside the certified region, missing data root, a finished run directory reused,
            a resumed run given settings that would change its result).
    """
    started = time.perf_counter()
    run = RunDir(output_dir)
    run.refuse_if_finished()
    if setting(cfg.trainer, "resume", bool, "trainer") and run.started() and (run.path / CONFIG).is_file():
        cfg = resumed_config(run, cfg, overrides)
    settings = TrainSettings.from_config(cfg)
    trainer = settings.trainer
    run.refuse_if_unfinished(trainer.resume)
    init_from = Path(trainer.init_from).expanduser() if trainer.init_from else None
    if init_from and not init_from.is_dir():
        raise UsageError(
            f"trainer.init_from={init_from} is not a run or sweep directory (give trainer.init_from=PATH)"
        )
    world = current_world()
    device = join(world, resolve_device(trainer.device))
    trainer = replace(trainer, precision=training_precision(trainer.precision, device))
    if trainer.threads:
        torch.set_num_threads(trainer.threads)
    if trainer.keep_memory and device.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(settings.recipe.seed)
    with main_first(world):  # rank 0 downloads into the shared folder, then the others read it
        data = load_data(settings.data)
    task = make_task(settings.recipe.loss, data, settings.data["name"])
    model = build_model(settings.model, data.info())
    if init_from:
        initialise_from(model, init_from, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    if not world.main:  # another rank under torchrun: train its shares, write nothing
        try:
            fit(model, data, task, trainer, settings.recipe, run, device, world=world)
        finally:
            leave(world)
        return {}
    logger = build_logger(settings.logger, run)
    with run.owned(), sigterm_interrupts():
        run.start(
            OmegaConf.to_yaml(cfg, resolve=True),
            settings.recipe.seed,
            {"command": "train", "model": cfg.model.name, "data": cfg.data.name, "loss": cfg.loss.name},
        )
        log.info(
            "model=%s (%d parameters) data=%s: %d train / %d val / %d test examples, device %s (%s), "
            "run dir %s",
            cfg.model.name,
            n_params,
            cfg.data.name,
            len(data.train),
            len(data.val or []),
            len(data.test),
            device,
            "float32" if trainer.precision == "32" else "bf16 autocast",
            run.path,
        )
        try:
            logger.start(to_plain(cfg))
            state = fit(model, data, task, trainer, settings.recipe, run, device, logger, world)
            chosen = choose_checkpoint(run, trainer.select)
            payload = load_checkpoint(chosen)
            model.load_state_dict(payload["state_dict"])
            model.eval()
            results = {
                "status": "done",
                **(
                    test_metrics(model, data, trainer, settings.certify_eps, device)
                    if trainer.test
                    else untested(model)
                ),
                "val_acc": metric_of(run, payload.get("epoch"), "val_acc"),
                "val_loss": metric_of(run, payload.get("epoch"), "val_loss"),
                "n_params": n_params,
                "certificate": model.certificate(),
                "epochs": state["epoch"],
                "selected_epoch": payload.get("epoch"),
                "n_train": len(data.train),
                "n_test": len(data.test),
                "train_seconds": round(state["seconds"], 3),
                "train_images": state["images"],
                "divergence_retries": state["retries"],
                "images_per_second": round(state["images"] / max(state["seconds"], 1e-9), 1),
                "peak_memory_mb": peak_memory_mb(device),
                "precision": trainer.precision,
                "ranks": world.size,
                "seconds": round(time.perf_counter() - started, 3),
            }
            digest = save_checkpoint(run.checkpoints / FINAL, model.cpu(), epoch=payload.get("epoch"))
            run.update(**results, weights_sha256=digest)
            logger.finish(run.summary)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the checkpoints of finished epochs stay
            run.update(
                status="interrupted",
                error=f"interrupted ({exc or 'SIGINT'}) after epoch {run.summary.get('epochs', 0)}; "
                f"continue with dsnn train hydra.run.dir={run.path} trainer.resume=true",
                seconds=round(time.perf_counter() - started, 3),
            )
            raise
        except BaseException as exc:
            run.update(
                status="failed",
                error=describe(exc)[0],
                seconds=round(time.perf_counter() - started, 3),
            )
            raise
        finally:
            logger.close()
            leave(world)
    print_summary(run)
    return run.summary


def initialise_from(model, source: Path, cfg: DictConfig) -> None:
    """Copy every weight but the head from a finished run (or the matching job of a sweep)."""
    run_dir = matching_run(source, cfg)
    payload = load_checkpoint(find_checkpoint(run_dir))
    own = model.state_dict()
    shared = {
        key: value
        for key, value in payload["state_dict"].items()
        if key in own and own[key].shape == value.shape and not key.startswith("head.")
    }
    if not shared:
        raise UsageError(f"trainer.init_from={source}: no weight of that run fits this model")
    model.load_state_dict(shared, strict=False)
    model.calibrate()
    log.info(
        "trainer.init_from: %d of %d tensors from %s (the head starts fresh)", len(shared), len(own), run_dir
    )


def matching_run(source: Path, cfg: DictConfig) -> Path:
    """`source` itself if it is a run; in a sweep directory, the one job with this model and loss."""
    if (source / "summary.json").is_file():
        return source
    if not source.is_dir():
        raise UsageError(f"trainer.init_from={source} is not a run or sweep directory")
    wanted = (to_plain(cfg.model), to_plain(cfg.loss))
    matches = []
    for config_path in sorted(source.glob("*/config.yaml")):
        other = OmegaConf.load(config_path)
        same = (to_plain(other.model), to_plain(other.loss))
        if same == wanted and RunDir(config_path.parent).status() == "done":
            matches.append(config_path.parent)
    if len(matches) != 1:
        raise UsageError(
            f"trainer.init_from={source}: {len(matches)} finished jobs there share this model and loss "
            "config (exactly one is needed)"
        )
    return matches[0]


@exact_float32()  # certificates are stated for exact float32 and float64 arithmetic
def test_metrics(model, data, trainer: TrainerConfig, certify_eps, device) -> dict[str, Any]:
    """The one use of the test set: accuracy and certificates, or MSE and structure metrics."""
    fmt = memory_format(trainer.channels_last and isinstance(data, ImageData))
    batch = trainer.eval_batch_size
    targets = data.test.targets
    if isinstance(data, VectorData):
        outputs = predict(model, (x for x, _ in batches(data.test, batch)), device=device)
        return {
            "test_acc": None,
            "test_mse": float(((outputs - targets) ** 2).mean()),
            "lipschitz_bound": lipschitz_bound(model),
            "certified": None,
            **flow_map_metrics(model, data.info(), data.test),
        }
    images = torch.cat([x for x, _ in batches(data.test, batch)])
    certification = certify(model, images, targets, device=device, batch_size=batch, memory_format=fmt)
    if certification is None:
        outputs = predict(model, images.split(batch), device=device, memory_format=fmt)
        correct = outputs.argmax(1) == targets.cpu()
        return {"test_acc": float(correct.float().mean()), "lipschitz_bound": None, "certified": None}
    return {
        "test_acc": float(certification.correct.float().mean()),
        **certification.summary(),
        "certified": certification.accuracy(certify_eps),
    }


def untested(model) -> dict[str, Any]:
    """trainer.test=false: the bound only; no test image is read."""
    return {"test_acc": None, "lipschitz_bound": lipschitz_bound(model), "certified": None}


def choose_checkpoint(run: RunDir, select: str) -> Path:
    """`trainer.select=best` takes the best validation epoch, `last` the final epoch."""
    best = run.checkpoints / BEST
    return best if select == "best" and best.is_file() else run.checkpoints / LAST


def metric_of(run: RunDir, epoch: int | None, key: str) -> float | None:
    """A value from the metrics row of `epoch` (the selected checkpoint's)."""
    for row in run.metrics():
        if row.get("epoch") == epoch:
            return row.get(key)
    return None


REGRESSION_KEYS = (
    "test_mse",
    "val_loss",
    "rollout_mse",
    "invariant_drift",
    "invariant_drift_exact_flow",
    "det_jacobian_error",
    "det_jacobian_error_mean",
)


def print_summary(run: RunDir) -> None:
    s = run.summary
    rows = [["run", str(run.path)]]
    if s.get("test_mse") is None:
        rows += [["test accuracy", percent(s["test_acc"])], ["val accuracy", percent(s["val_acc"])]]
    rows += [[key.replace("_", " "), f"{s[key]:.4g}"] for key in REGRESSION_KEYS if s.get(key) is not None]
    bound = s["lipschitz_bound"]
    rows.append(["Lipschitz bound", "none (no certificate)" if bound is None else f"{bound:.6g}"])
    rows += [
        [f"certified @ eps={eps_label(float(eps))}", percent(v)] for eps, v in (s["certified"] or {}).items()
    ]
    rows += [
        ["parameters", str(s["n_params"])],
        ["epochs", str(s["epochs"])],
        ["time", f"{s['seconds']:.1f} s"],
    ]
    title = f"dsnn train: {s['model']} on {s['data']}"
    print_table(title, ["", ""], rows, left={""}, show_header=False)


@hydra.main(version_base="1.3", config_path="pkg://dsnn_cli.conf", config_name="train")
@guarded
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `dsnn train`."""
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.get()
    run_train(cfg, Path(hydra_config.runtime.output_dir), list(hydra_config.overrides.task))
