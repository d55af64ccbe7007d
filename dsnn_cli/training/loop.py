"""The training loop, readable top to bottom, and evaluation helpers.

Per epoch: train on shuffled, augmented batches; `calibrate()` the norm constraints to
proven bounds; measure the validation split; save ``last.pt`` (full training state, for
bit-for-bit resumption) and ``best.pt`` (best validation accuracy).

An optimisation step never waits for the device: losses and counts stay on it, and the loop
reads them (with the divergence check and, under DDP, the slowest rank's clock) in one go
every READ_EVERY batches and at the epoch's end, so a GPU runs ahead of the host.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dsnn_cli.config import check, setting
from dsnn_cli.console import progress_bar
from dsnn_cli.data.containers import ImageData, Split, VectorData
from dsnn_cli.data.loading import batches
from dsnn_cli.devices import autocast, memory_format, peak_memory_mb, resident_memory_mb, training_arithmetic
from dsnn_cli.distributed import World
from dsnn_cli.errors import DsnnError, UsageError
from dsnn_cli.models.inference import predict
from dsnn_cli.rundir import RunDir
from dsnn_cli.training.averaging import WeightAverage
from dsnn_cli.training.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from dsnn_cli.training.loggers import MetricLogger
from dsnn_cli.training.losses import LipschitzMarginLoss, build_loss
from dsnn_cli.training.optim import build_optimizer, build_schedule

log = logging.getLogger("dsnn.train")


class Diverged(DsnnError):
    """Training produced a non-finite loss or weight and the retries at lower rates are spent."""


@dataclass
class Snapshot:
    """The training state at an epoch's start, in memory: what a diverged epoch restarts from."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor
    torch_rng: torch.Tensor
    state: dict[str, Any]
    average: dict[str, torch.Tensor] | None = None

    @classmethod
    def take(
        cls,
        model: nn.Module,
        optimizer,
        generator: torch.Generator,
        state: dict,
        average: WeightAverage | None,
    ) -> Snapshot:
        return cls(
            copy.deepcopy(model.state_dict()),
            copy.deepcopy(optimizer.state_dict()),
            generator.get_state(),
            torch.get_rng_state(),
            copy.deepcopy(state),
            None if average is None else average.state_dict(),
        )

    def restore(
        self, model: nn.Module, optimizer, generator: torch.Generator, average: WeightAverage | None
    ) -> dict[str, Any]:
        model.load_state_dict(self.model)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        generator.set_state(self.generator)
        torch.set_rng_state(self.torch_rng)
        if average is not None:
            average.load_state_dict(self.average)
        return copy.deepcopy(self.state)


def finite_weights(model: nn.Module) -> bool:
    """Whether every weight and buffer is finite (one read of the device)."""
    checks = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


# Training arithmetic: float32, or bfloat16 autocast for the forward pass (the weights, the
# optimiser, every norm, bound and certificate stay float32/float64; devices.py has the policy).
PRECISIONS = ("32", "bf16", "auto")
# Batches between two reads of the device (losses for the logger and the progress bar, the
# divergence check, the slowest rank's clock): one host sync per READ_EVERY batches.
READ_EVERY = 25


@dataclass(frozen=True)
class TrainerConfig:
    """The `trainer` group, validated: how long, in what batches, where, and what to keep."""

    max_epochs: int
    batch_size: int
    eval_batch_size: int
    device: str
    limit_batches: int | None
    select: str
    resume: bool
    init_from: str | None
    channels_last: bool
    threads: int | None
    keep_memory: bool
    progress: bool | None
    max_minutes: float | None
    divergence_retries: int
    divergence_lr_factor: float
    precision: str
    compile: bool
    deterministic: bool = False
    test: bool = True
    ema: float | None = None

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> TrainerConfig:
        """Check every key of the group (types and ranges) or raise one UsageError line."""
        return cls(
            max_epochs=setting(node, "max_epochs", int, "trainer", low=1),
            batch_size=setting(node, "batch_size", int, "trainer", low=1),
            eval_batch_size=setting(node, "eval_batch_size", int, "trainer", low=1),
            device=setting(node, "device", str, "trainer"),
            limit_batches=setting(node, "limit_batches", int, "trainer", low=1, nullable=True),
            select=setting(node, "select", str, "trainer", choices=("best", "last")),
            resume=setting(node, "resume", bool, "trainer"),
            init_from=setting(node, "init_from", str, "trainer", nullable=True),
            channels_last=setting(node, "channels_last", bool, "trainer"),
            threads=setting(node, "threads", int, "trainer", low=1, nullable=True),
            # a run resumed from a config written before the key existed: keep it, the default
            keep_memory="keep_memory" not in node or setting(node, "keep_memory", bool, "trainer"),
            progress=setting(node, "progress", bool, "trainer", nullable=True),
            max_minutes=setting(node, "max_minutes", float, "trainer", low=0, low_open=True, nullable=True),
            divergence_retries=setting(node, "divergence_retries", int, "trainer", low=0),
            divergence_lr_factor=setting(
                node, "divergence_lr_factor", float, "trainer", low=0, high=1, low_open=True
            ),
            # "32", bf16 or auto; a bare 32 on the command line arrives as an integer
            precision=check("trainer.precision", str(node.get("precision")), str, choices=PRECISIONS),
            compile=setting(node, "compile", bool, "trainer"),
            # a run resumed from a config written before the key existed: not deterministic
            deterministic="deterministic" in node and setting(node, "deterministic", bool, "trainer"),
            # a run resumed from a config written before the key existed: tested
            test="test" not in node or setting(node, "test", bool, "trainer"),
            # a run resumed from a config written before the key existed: no average
            ema=average_decay(node),
        )

    @property
    def budget_seconds(self) -> float | None:
        return None if self.max_minutes is None else 60.0 * self.max_minutes


def average_decay(node: Mapping[str, Any]) -> float | None:
    """`trainer.ema`: null, or a decay in [0, 1) (1 would never move the average off the start)."""
    decay = setting(node, "ema", float, "trainer", low=0, high=1, nullable=True) if "ema" in node else None
    if decay == 1.0:
        raise UsageError(
            "trainer.ema=1 never moves the average off the initial weights: give a decay below 1, e.g. 0.998"
        )
    return decay


@dataclass(frozen=True)
class Recipe:
    """What is optimised and how: the loss, optimiser and schedule groups, the seed, augmentation."""

    loss: Mapping[str, Any]
    optim: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    seed: int
    augment: str  # one of data.images.AUGMENTATIONS
    # Free adversarial training: from the fraction `adversarial_start` of training on, each batch
    # is trained on, then again at adversary(x, input gradient of that step) (None: clean only)
    adversary: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    adversarial_start: float = 0.0

    def check(self) -> None:
        """Build loss, optimiser and schedule on a stand-in parameter, so that a bad setting is
        refused before any data is read or a run directory is written."""
        build_loss(self.loss)
        optimizer = build_optimizer(self.optim, [nn.Parameter(torch.zeros(1))])
        build_schedule(self.scheduler, optimizer, epochs=1).set(0.0)


@dataclass
class EpochStats:
    """Running loss (and accuracy, for classification) over an epoch: summed on the device,
    read by `read` at the epoch's end."""

    classification: bool
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    def __post_init__(self) -> None:
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, correct

    def add(self, loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        n = int(targets.shape[0])
        correct = (outputs.argmax(1) == targets).sum() if self.classification else loss.new_zeros(())
        self.sums += torch.stack([loss.detach().double() * n, correct.double()])
        self.seen += n

    def read(self, world: World) -> None:
        """The whole epoch's figures, summed over the ranks, into loss_sum, correct and seen."""
        totals = torch.cat([self.sums, self.sums.new_full((1,), float(self.seen))])
        self.loss_sum, correct, seen = world.sum(totals).tolist()
        self.correct, self.seen = int(correct), int(seen)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def acc(self) -> float:
        return self.correct / max(self.seen, 1)

    def describe(self) -> str:
        return figures(self.classification, self.loss_sum, self.correct, self.seen)


def figures(classification: bool, loss_sum: float, correct: float, seen: int) -> str:
    """Mean loss (and accuracy) of `seen` examples, for the progress bar."""
    seen = max(seen, 1)
    return f"loss {loss_sum / seen:.4g}" + (f" acc {correct / seen:.3f}" if classification else "")


@dataclass
class Reading:
    """What one read of the device found."""

    diverged: bool  # some rank's loss was not finite since the last read
    clock: float  # the slowest rank's seconds of training
    status: str  # the epoch so far, for the progress bar


@dataclass
class DeviceReads:
    """The step losses the loop has not read yet, and the one read that takes them all."""

    world: World
    logger: MetricLogger
    pending: list[tuple[int, str, torch.Tensor]] = field(default_factory=list)

    def record(self, step: int, key: str, loss: torch.Tensor) -> None:
        self.pending.append((step, key, loss))

    def read(self, spent: float, stats: EpochStats) -> Reading:
        """One host sync: reduce (MAX over the ranks) the divergence flag and the clock on the
        device, then read them with the pending losses and the epoch's running sums."""
        losses = [loss.double() for _, _, loss in self.pending]
        losses = torch.stack(losses) if losses else stats.sums.new_zeros(0)
        agreed = torch.stack([(~torch.isfinite(losses)).any().double(), stats.sums.new_full((), spent)])
        values = torch.cat([self.world.max(agreed), stats.sums, losses]).tolist()
        diverged = values[0] > 0
        if not diverged:  # a diverged epoch restarts, and its steps are logged again
            for (step, key, _), value in zip(self.pending, values[4:], strict=True):
                self.logger.step(step, {key: value})
        self.pending.clear()
        return Reading(diverged, values[1], figures(stats.classification, *values[2:4], stats.seen))


@dataclass
class Task:
    """Classification (logits, accuracy, higher is better) or regression (MSE, lower is better)."""

    classification: bool
    loss_fn: nn.Module = field(repr=False)

    def loss(self, model: nn.Module, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss; a certification loss also sees the head's rows (pairwise offsets)."""
        if isinstance(self.loss_fn, LipschitzMarginLoss) and hasattr(model, "classifier_rows"):
            return self.loss_fn(outputs, targets, model.classifier_rows())
        return self.loss_fn(outputs, targets)

    def evaluate(self, model: nn.Module, split: Split, batch_size: int, fmt) -> dict[str, float]:
        model.eval()
        outputs = predict(model, (x for x, _ in batches(split, batch_size)), memory_format=fmt)
        targets = split.targets.cpu()
        with torch.no_grad():
            row = {"val_loss": round(float(self.loss(model, outputs, targets)), 8)}
        if self.classification:
            row["val_acc"] = round(float((outputs.argmax(1) == targets).float().mean()), 6)
        return row

    def score(self, row: Mapping[str, Any]) -> float:
        """What checkpoint choice maximises."""
        return row["val_acc"] if self.classification else -row["val_loss"]


def make_task(loss: Mapping[str, Any], data: ImageData | VectorData, data_name: str) -> Task:
    regression = isinstance(data, VectorData)
    if regression and loss["name"] != "mse":
        raise UsageError(f"data={data_name} is a regression task: use loss=mse (got loss={loss['name']})")
    if not regression and loss["name"] == "mse":
        raise UsageError(
            f"data={data_name} is a classification task: use loss=hinge, cross_entropy or lipschitz_margin"
        )
    return Task(not regression, build_loss(loss))


def batches_per_epoch(n: int, batch_size: int, limit: int | None) -> int:
    full = -(-n // batch_size)
    return full if limit is None else min(full, int(limit))


def fit(
    model: nn.Module,
    data: ImageData | VectorData,
    task: Task,
    trainer: TrainerConfig,
    recipe: Recipe,
    run: RunDir,
    device: torch.device,
    logger: MetricLogger | None = None,
    world: World | None = None,
) -> dict:
    """Train `model` on `data.train`; returns what the summary needs.

    The learning rate follows the schedule over `max_epochs` epochs; with `max_minutes` it
    follows the clock instead (progress = time spent / budget, as many epochs as fit), so that
    a run takes the same wall time on any machine. `logger` sees every step's loss and every
    epoch's row (metrics.jsonl is written regardless). Under torchrun (`world`) each rank
    trains on its share of every global batch and only rank 0 writes.
    """
    logger = logger or MetricLogger(run, {})
    world = world or World()
    epochs, batch_size, limit = trainer.max_epochs, trainer.batch_size, trainer.limit_batches
    budget = trainer.budget_seconds
    fmt = memory_format(trainer.channels_last and task.classification)
    assert data.train is not None
    train_split = data.train.to(device)
    val_split = data.val.to(device) if data.val is not None and len(data.val) else None
    model.to(device=device, memory_format=fmt)
    trained = model if not world.distributed else data_parallel(model, device)
    forward = torch.compile(trained) if trainer.compile else trained  # training steps only
    optimizer = build_optimizer(recipe.optim, model.parameters())
    average = None if trainer.ema is None else WeightAverage(model, trainer.ema)
    steps = batches_per_epoch(len(train_split), batch_size, limit)
    schedule = build_schedule(recipe.scheduler, optimizer, epochs)
    generator = torch.Generator().manual_seed(recipe.seed)
    state = {
        "epoch": 0,
        "best_score": -math.inf,
        "best_epoch": 0,
        "seconds": 0.0,
        "images": 0,
        "lr_scale": 1.0,
        "retries": 0,
        "steps": 0,
    }
    if trainer.resume and (run.checkpoints / LAST).is_file():
        state = {**state, **resume(run, model, optimizer, generator, average)}
        if world.main:
            run.reset_metrics(state["epoch"])
        log.info("resumed from %s at epoch %d (trainer.resume)", run.checkpoints / LAST, state["epoch"])
    elif world.main:  # a run cut off before its first checkpoint starts again: so do its rows
        run.reset_metrics(0)
    augment = recipe.augment if isinstance(data, ImageData) else "none"
    reads = DeviceReads(world, logger)
    with progress_bar(trainer.progress) as bar, training_arithmetic(device, trainer.deterministic):
        total = budget if budget is not None else (epochs - state["epoch"]) * steps
        progress = bar.add_task("train", total=total, status="")
        epoch = first = state["epoch"]
        while not finished(state, epochs, budget, world, device):
            epoch += 1
            started = time.perf_counter()
            snapshot = Snapshot.take(model, optimizer, generator, state, average)
            diverged = False
            model.train()
            stats = EpochStats(task.classification, device)
            clock = state["seconds"]  # the slowest rank's, as of the last read
            spent = clock
            for b, (x, y) in enumerate(
                batches(
                    train_split, batch_size, shuffle=True, augment=augment, generator=generator, limit=limit
                )
            ):
                spent = state["seconds"] + time.perf_counter() - started
                if b % READ_EVERY == 0:
                    reading = reads.read(spent, stats)
                    if reading.diverged:
                        diverged = True
                        break
                    clock = reading.clock
                    bar.update(progress, status=f"epoch {epoch} {reading.status}")
                if world.distributed:
                    spent = clock  # one clock for all ranks: the same schedule, and they stop together
                if budget is not None and spent >= budget:
                    break
                # progress in epochs: of the budget's clock, or of the batches
                elapsed = epochs * spent / budget if budget is not None else epoch - 1 + b / steps
                schedule.set(elapsed, scale=state["lr_scale"])
                batch = int(y.shape[0])
                if world.distributed:
                    share = world.share(batch)
                    x, y = x[share], y[share]
                adversarial = recipe.adversary is not None and elapsed >= recipe.adversarial_start * epochs
                x = x.contiguous(memory_format=fmt).requires_grad_(adversarial)
                precision = trainer.precision
                loss, outputs = optimise(forward, model, task, optimizer, x, y, precision, world, batch)
                averaged(average, model)
                state["steps"] += 1
                reads.record(state["steps"], "loss", loss)
                if adversarial:  # the same batch again, moved along the gradient it left (free AT)
                    moved = recipe.adversary(x.detach(), x.grad)
                    replay, _ = optimise(forward, model, task, optimizer, moved, y, precision, world, batch)
                    averaged(average, model)
                    state["steps"] += 1
                    reads.record(state["steps"], "adversarial_loss", replay)
                stats.add(loss, outputs, y)
                state["images"] += batch
                done = spent if budget is not None else (epoch - 1 - first) * steps + b + 1
                bar.update(progress, completed=done)
            if not diverged:  # what the last read did not see
                diverged = reads.read(spent, stats).diverged
            if diverged or not finite_weights(model):
                state = retry_after_divergence(
                    snapshot, model, optimizer, generator, average, trainer, epoch, started
                )
                epoch -= 1
                continue
            model.calibrate()
            stats.read(world)
            bar.update(progress, status=f"epoch {epoch} {stats.describe()}")
            with scored_weights(model, average) as trained:
                row = epoch_row(epoch, stats, optimizer, model, val_split, task, trainer, fmt)
                row.update(peak_memory_mb=peak_memory_mb(device), rss_mb=resident_memory_mb())
                state["seconds"] += time.perf_counter() - started
                row["seconds"] = round(state["seconds"], 3)
                improved = val_split is None or task.score(row) > state["best_score"]
                if improved:
                    state.update(
                        best_score=task.score(row) if val_split is not None else -math.inf, best_epoch=epoch
                    )
                state["epoch"] = epoch
                if world.main:  # every rank holds the same state; one writes it
                    record_epoch(run, logger, model, optimizer, generator, state, row, improved, trained)
                world.barrier()  # no rank starts the next epoch before the checkpoint is written
    return state


def averaged(average: WeightAverage | None, model: nn.Module) -> None:
    """One step of the weights' moving average (`trainer.ema`), after each optimiser step."""
    if average is not None:
        average.update(model)


@contextmanager
def scored_weights(
    model: nn.Module, average: WeightAverage | None
) -> Iterator[dict[str, torch.Tensor] | None]:
    """The weights an epoch is validated and saved with: with `trainer.ema` the average,
    calibrated to its own proven norms (yields the trained parameters, which `last.pt` keeps for a
    resumed run), else the model's own (yields None)."""
    if average is None:
        yield None
        return
    with average.applied(model) as trained:
        model.calibrate()
        yield trained


def optimise(
    forward, model: nn.Module, task: Task, optimizer, x, y, precision: str, world: World, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on (x, y); returns the loss and the logits, detached and unread, so the
    step never waits for the device (a non-finite loss is found by the loop's next read, and the
    epoch restarts from its snapshot). The input's gradient is left in x.grad when x requires it."""
    with autocast(x.device, precision):
        outputs = forward(x)
        loss = task.loss(model, outputs.float(), y)  # the loss in float32, whatever the activations
    penalty = model.regularization()
    # DDP averages the ranks' gradients: weighting each share's mean by its size makes
    # that average the gradient of the whole batch's mean, shares equal or not
    share_weight = y.shape[0] * world.size / batch
    total_loss = loss * share_weight if penalty is None else loss * share_weight + penalty
    optimizer.zero_grad(set_to_none=True)
    total_loss.backward()
    optimizer.step()
    return loss.detach(), outputs.detach()


def record_epoch(run, logger, model, optimizer, generator, state, row, improved: bool, trained=None) -> None:
    """The epoch's row, checkpoints and summary, in the order a resumed run relies on."""
    run.append_metrics(row)  # before the checkpoint: a resumed run drops rows past it
    save_training_state(run, model, optimizer, generator, state, best=improved, trained=trained)
    logger.epoch(row["epoch"], row)  # after it: a logger never shows an epoch a resume redoes
    run.update(
        epochs=row["epoch"],
        val_acc=row.get("val_acc"),
        val_loss=row.get("val_loss"),
        seconds=round(state["seconds"], 3),
    )
    log.info(format_row(row))


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """The model under DistributedDataParallel (buffers such as power-iteration vectors are
    broadcast from rank 0 at every forward, so the ranks' constraints agree)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def retry_after_divergence(
    snapshot: Snapshot,
    model,
    optimizer,
    generator,
    average,
    trainer: TrainerConfig,
    epoch: int,
    started: float,
) -> dict[str, Any]:
    """Restart the epoch from its snapshot at a lower learning rate, or raise Diverged when the
    retries are spent (the checkpoints of the finished epochs stay as they are)."""
    state = snapshot.restore(model, optimizer, generator, average)
    if state["retries"] >= trainer.divergence_retries:
        raise Diverged(
            f"training diverged (a non-finite loss or weight) in epoch {epoch} after "
            f"{state['retries']} retries with the learning rate scaled by {state['lr_scale']:g}; the "
            f"checkpoints up to epoch {epoch - 1} are kept: lower optim.lr or raise "
            "trainer.divergence_retries"
        )
    state["retries"] += 1
    state["lr_scale"] *= trainer.divergence_lr_factor
    state["seconds"] += time.perf_counter() - started  # the failed attempt's time still counts
    log.warning(
        "epoch %d diverged (a non-finite loss or weight): restarting it at %g x the learning rate "
        "(retry %d of %d)",
        epoch,
        state["lr_scale"],
        state["retries"],
        trainer.divergence_retries,
    )
    return state


def finished(
    state: Mapping[str, Any],
    epochs: int,
    budget: float | None,
    world: World | None = None,
    device: torch.device | None = None,
) -> bool:
    """Done when the epochs are, or (with a time budget) when the budget is spent (by the
    slowest rank's clock, so that all ranks stop together)."""
    if budget is None:
        return state["epoch"] >= epochs
    if world is None or not world.distributed:
        return state["seconds"] >= budget
    clock = torch.full((), state["seconds"], dtype=torch.float64, device=device)
    return float(world.max(clock)) >= budget


def epoch_row(epoch, stats, optimizer, model, val_split, task: Task, trainer, fmt) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch, "train_loss": round(stats.loss, 8)}
    if stats.classification:
        row["train_acc"] = round(stats.acc, 6)
    row["lr"] = optimizer.param_groups[0]["lr"]
    if val_split is not None:
        row.update(task.evaluate(model, val_split, trainer.eval_batch_size, fmt))
    return row


def format_row(row: Mapping[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}"]
    parts += [f"{k} {row[k]:.4g}" for k in ("train_loss", "train_acc", "val_loss", "val_acc") if k in row]
    parts.append(f"lr {row['lr']:.3g}")
    parts.append(f"{row['seconds']:.1f}s")
    return " | ".join(parts)


def save_training_state(run, model, optimizer, generator, state, best: bool, trained=None) -> None:
    """`last.pt` holds the model as scored (with `trainer.ema` the average, whose parameters are
    the average's state) and, under "training", what a resumed run needs: the optimiser, the
    random streams, the loop's state and, with an average, the trained parameters."""
    extra = {
        "epoch": state["epoch"],
        "training": {
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "state": {k: v for k, v in state.items()},
            **({} if trained is None else {"trained": {k: v.detach().cpu() for k, v in trained.items()}}),
        },
    }
    save_checkpoint(run.checkpoints / LAST, model, **extra)
    if best:
        save_checkpoint(run.checkpoints / BEST, model, epoch=state["epoch"])


def resume(run: RunDir, model, optimizer, generator, average: WeightAverage | None = None) -> dict[str, Any]:
    """Restore weights, optimizer and random streams from ``last.pt`` (the schedule follows
    from the progress the state records); with `trainer.ema`, the average from its weights and
    the model from the trained parameters beside them."""
    payload = load_checkpoint(run.checkpoints / LAST)
    if payload["model_config"] != model.config["model"]:
        raise UsageError(
            f"trainer.resume: the model config differs from the one in {run.checkpoints / LAST}; "
            "resume with the original overrides"
        )
    model.load_state_dict(payload["state_dict"])
    training = payload["training"]
    if average is not None:
        with torch.no_grad():
            average.load_state_dict(dict(model.named_parameters()))
            for name, p in model.named_parameters():
                p.copy_(training["trained"][name])
    optimizer.load_state_dict(training["optimizer"])
    generator.set_state(training["generator"])
    torch.set_rng_state(training["torch_rng"])
    return dict(training["state"])
