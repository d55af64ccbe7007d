"""The training loop, readable top to bottom, and evaluation helpers.

Per epoch: train on shuffled, augmented batches; `calibrate()` the norm constraints to
proven bounds; measure the validation split; save ``last.pt`` (full training state, for
bit-for-bit resumption) and ``best.pt`` (best validation accuracy).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dsnn_cli.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from dsnn_cli.data import ImageData, Split, batches
from dsnn_cli.errors import UsageError
from dsnn_cli.losses import build_loss
from dsnn_cli.optim import build_optimizer, build_scheduler
from dsnn_cli.progress import progress_bar
from dsnn_cli.rundir import RunDir

log = logging.getLogger("dsnn.train")


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"trainer.device={name} but CUDA is not available; use trainer.device=auto")
    return torch.device(name)


def memory_format(trainer: Mapping[str, Any]) -> torch.memory_format:
    return torch.channels_last if trainer.get("channels_last", True) else torch.contiguous_format


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int, fmt=torch.contiguous_format) -> torch.Tensor:
    """Logits for a whole split (eval mode), on the CPU."""
    model.eval()
    outputs = [model(x.contiguous(memory_format=fmt)).float().cpu() for x, _ in batches(split, batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    batches: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = int(labels.shape[0])
        self.loss_sum += loss * n
        self.correct += int((logits.argmax(1) == labels).sum())
        self.seen += n
        self.batches += 1

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def acc(self) -> float:
        return self.correct / max(self.seen, 1)


def batches_per_epoch(n: int, batch_size: int, limit: int | None) -> int:
    full = -(-n // batch_size)
    return full if limit is None else min(full, int(limit))


def fit(model: nn.Module, data: ImageData, cfg: Mapping[str, Any], run: RunDir, device: torch.device) -> dict:
    """Train `model` on `data.train` as configured; returns what the summary needs."""
    trainer = cfg["trainer"]
    epochs, batch_size = int(trainer["max_epochs"]), int(trainer["batch_size"])
    limit = trainer.get("limit_batches")
    fmt = memory_format(trainer)
    assert data.train is not None
    train_split = data.train.to(device)
    val_split = data.val.to(device) if data.val is not None else None
    model.to(device=device, memory_format=fmt)
    optimizer = build_optimizer(cfg["optim"], model.parameters())
    steps = batches_per_epoch(len(train_split), batch_size, limit)
    scheduler = build_scheduler(cfg["scheduler"], optimizer, epochs, steps)
    loss_fn = build_loss(cfg["loss"])
    generator = torch.Generator().manual_seed(int(cfg["seed"]))
    state = {"epoch": 0, "best_val_acc": -1.0, "best_epoch": 0, "seconds": 0.0}
    if trainer.get("resume") and (run.checkpoints / LAST).is_file():
        state = resume(run, model, optimizer, scheduler, generator)
        run.reset_metrics(state["epoch"])
        log.info("resumed from %s at epoch %d (trainer.resume)", run.checkpoints / LAST, state["epoch"])
    augment = bool(cfg["data"].get("augment", False))
    with progress_bar(trainer.get("progress")) as bar:
        task = bar.add_task("train", total=(epochs - state["epoch"]) * steps, status="")
        for epoch in range(state["epoch"] + 1, epochs + 1):
            started = time.perf_counter()
            model.train()
            stats = EpochStats()
            for x, y in batches(
                train_split, batch_size, shuffle=True, augment=augment, generator=generator, limit=limit
            ):
                logits = model(x.contiguous(memory_format=fmt))
                loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                stats.add(loss.item(), logits.detach(), y)
                bar.update(
                    task,
                    advance=1,
                    status=f"epoch {epoch}/{epochs} loss {stats.loss:.4f} acc {stats.acc:.3f}",
                )
            model.calibrate()
            row = epoch_row(epoch, stats, optimizer, model, val_split, loss_fn, trainer, fmt)
            state["seconds"] += time.perf_counter() - started
            row["seconds"] = round(state["seconds"], 3)
            improved = row.get("val_acc", 0.0) > state["best_val_acc"] or val_split is None
            if improved:
                state.update(best_val_acc=row.get("val_acc", -1.0), best_epoch=epoch)
            state["epoch"] = epoch
            run.append_metrics(row)  # before the checkpoint: a resumed run drops rows past it
            save_training_state(run, model, optimizer, scheduler, generator, state, cfg, best=improved)
            run.update(epochs=epoch, val_acc=row.get("val_acc"), seconds=round(state["seconds"], 3))
            log.info(format_row(row))
    return state


def epoch_row(epoch, stats, optimizer, model, val_split, loss_fn, trainer, fmt) -> dict[str, Any]:
    row: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": round(stats.loss, 6),
        "train_acc": round(stats.acc, 6),
        "lr": optimizer.param_groups[0]["lr"],
    }
    if val_split is not None and len(val_split):
        logits = predict(model, val_split, int(trainer.get("eval_batch_size", 500)), fmt)
        labels = val_split.labels.cpu()
        row["val_loss"] = round(float(loss_fn(logits, labels)), 6)
        row["val_acc"] = round(float((logits.argmax(1) == labels).float().mean()), 6)
    return row


def format_row(row: Mapping[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}"]
    parts += [f"{k} {row[k]:.4f}" for k in ("train_loss", "train_acc", "val_loss", "val_acc") if k in row]
    parts.append(f"lr {row['lr']:.3g}")
    parts.append(f"{row['seconds']:.1f}s")
    return " | ".join(parts)


def save_training_state(run, model, optimizer, scheduler, generator, state, cfg, best: bool) -> None:
    extra = {
        "epoch": state["epoch"],
        "training": {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "state": {k: v for k, v in state.items()},
        },
    }
    save_checkpoint(run.checkpoints / LAST, model, **extra)
    if best:
        save_checkpoint(run.checkpoints / BEST, model, epoch=state["epoch"])


def resume(run: RunDir, model, optimizer, scheduler, generator) -> dict[str, Any]:
    """Restore weights, optimizer, schedule and random streams from ``last.pt``."""
    payload = load_checkpoint(run.checkpoints / LAST)
    if payload["model_config"] != model.config["model"]:
        raise UsageError(
            f"trainer.resume: the model config differs from the one in {run.checkpoints / LAST}; "
            "resume with the original overrides"
        )
    model.load_state_dict(payload["state_dict"])
    training = payload["training"]
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    generator.set_state(training["generator"])
    torch.set_rng_state(training["torch_rng"])
    return dict(training["state"])
