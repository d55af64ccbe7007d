"""`dsnn train`: build data and model from the config, fit, then evaluate once on the test set."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dsnn_cli.certify import certified_accuracy, lipschitz_bound, logit_margins, parse_eps
from dsnn_cli.checkpoint import BEST, FINAL, LAST, load_checkpoint, save_checkpoint
from dsnn_cli.cli import one_line
from dsnn_cli.data import load_data
from dsnn_cli.networks import build_model, check_model_config
from dsnn_cli.progress import console
from dsnn_cli.rundir import RunDir
from dsnn_cli.training import fit, memory_format, predict, resolve_device

log = logging.getLogger("dsnn.train")


def run_train(cfg: DictConfig, output_dir: Path | str) -> dict[str, Any]:
    """Train one model into `output_dir` and return its summary.

    Raises:
        UsageError: bad config (unknown option, step sizes outside the certified region,
            missing data root, a finished run directory reused).
    """
    started = time.perf_counter()
    run = RunDir(output_dir)
    run.refuse_if_finished()
    certify_eps = parse_eps(cfg.certify.eps)
    check_model_config(cfg.model)
    device = resolve_device(str(cfg.trainer.device))
    if cfg.trainer.get("threads"):
        torch.set_num_threads(int(cfg.trainer.threads))
    torch.manual_seed(int(cfg.seed))
    data = load_data(cfg.data)
    model = build_model(cfg.model, data.info())
    n_params = sum(p.numel() for p in model.parameters())
    run.start(
        OmegaConf.to_yaml(cfg, resolve=True),
        int(cfg.seed),
        {"command": "train", "model": cfg.model.name, "data": cfg.data.name, "loss": cfg.loss.name},
    )
    log.info(
        "model=%s (%d parameters) data=%s: %d train / %d val / %d test images, device %s, run dir %s",
        cfg.model.name,
        n_params,
        cfg.data.name,
        len(data.train),
        len(data.val or []),
        len(data.test),
        device,
        run.path,
    )
    try:
        state = fit(model, data, cfg, run, device)
        chosen = choose_checkpoint(run, str(cfg.trainer.get("select", "best")))
        payload = load_checkpoint(chosen)
        model.load_state_dict(payload["state_dict"])
        model.eval()
        logits = predict(
            model, data.test.to(device), int(cfg.trainer.eval_batch_size), memory_format(cfg.trainer)
        )
        labels = data.test.labels
        margins = logit_margins(logits, labels)
        bound = lipschitz_bound(model)
        results = {
            "status": "done",
            "test_acc": float((logits.argmax(1) == labels).float().mean()),
            "val_acc": val_acc_of(run, payload.get("epoch")),
            "lipschitz_bound": bound,
            "certified": certified_accuracy(margins, bound, certify_eps),
            "n_params": n_params,
            "epochs": state["epoch"],
            "selected_epoch": payload.get("epoch"),
            "n_test": len(labels),
            "train_seconds": round(state["seconds"], 3),
            "seconds": round(time.perf_counter() - started, 3),
        }
        save_checkpoint(run.checkpoints / FINAL, model.cpu(), epoch=payload.get("epoch"))
        run.update(**results)
    except BaseException as exc:
        run.update(
            status="failed",
            error=one_line(f"{type(exc).__name__}: {exc}"),
            seconds=round(time.perf_counter() - started, 3),
        )
        raise
    print_summary(run)
    return run.summary


def choose_checkpoint(run: RunDir, select: str) -> Path:
    """`trainer.select=best` takes the best validation epoch, `last` the final epoch."""
    best = run.checkpoints / BEST
    return best if select == "best" and best.is_file() else run.checkpoints / LAST


def val_acc_of(run: RunDir, epoch: int | None) -> float | None:
    import json

    path = run.path / "metrics.jsonl"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("epoch") == epoch:
            return row.get("val_acc")
    return None


def print_summary(run: RunDir) -> None:
    from rich.table import Table

    s = run.summary
    table = Table(title=f"dsnn train: {s.get('model')} on {s.get('data')}", show_header=False)
    table.add_row("run", str(run.path))
    table.add_row("test accuracy", fmt(s.get("test_acc")))
    table.add_row("val accuracy", fmt(s.get("val_acc")))
    bound = s.get("lipschitz_bound")
    table.add_row("Lipschitz bound", "none (no certificate)" if bound is None else f"{bound:.6g}")
    for eps, value in (s.get("certified") or {}).items():
        table.add_row(f"certified @ eps={eps}", fmt(value))
    table.add_row("parameters", str(s.get("n_params")))
    table.add_row("epochs", str(s.get("epochs")))
    table.add_row("time", f"{s.get('seconds', 0):.1f} s")
    console.print(table)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
