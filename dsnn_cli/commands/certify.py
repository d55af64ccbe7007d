"""`dsnn certify`: certified accuracy of a run's float32 model on its full test set.

Writes ``RUN_DIR/certify.json``: the bound, the logit slack and the deviation it came from,
the certificate, ``n``, the margin quantiles and ``results``, a list of ``{eps, clean, certified}``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from dsnn_cli.commands import guarded
from dsnn_cli.commands.common import (
    certificate_caption,
    checkpoint_to_evaluate,
    evaluation_points,
    mean,
    print_eps_table,
)
from dsnn_cli.config import setting
from dsnn_cli.devices import exact_float32, resolve_device
from dsnn_cli.models.inference import predict
from dsnn_cli.robustness.certificates import (
    certify,
    check_radii,
    format_eps,
    logit_margins,
    parse_eps,
)
from dsnn_cli.rundir import atomic_write_json
from dsnn_cli.training.checkpoint import load_checkpoint, model_from_checkpoint
from dsnn_cli.training.loggers import log_to_tracked_run


@exact_float32()  # certificates are stated for exact float32 and float64 arithmetic
def run_certify(cfg) -> dict[str, Any]:
    """Certified accuracy of ``cfg.run`` at every eps: one float32 and one float64 pass."""
    started = time.perf_counter()
    run_dir = Path(str(cfg["run"])).expanduser()
    eps_list = parse_eps(cfg["eps"])
    n_examples = setting(cfg, "n_examples", int, "", low=1, nullable=True)
    batch_size = setting(cfg, "batch_size", int, "", low=1)
    device = resolve_device(str(cfg["device"]), key="device")
    checkpoint = checkpoint_to_evaluate(run_dir)
    payload = load_checkpoint(checkpoint)
    model = model_from_checkpoint(payload).eval()
    data_info = model.config["data_info"]
    check_radii(eps_list, data_info)
    images, labels, _ = evaluation_points(
        run_dir, data_info, n_examples, cfg["data_root"], full_test_set=True
    )
    certification = certify(model.to(device), images, labels, device=device, batch_size=batch_size)
    if certification is None:
        logits = predict(model, images.split(batch_size), device=device)
        correct, radii, certified = logits.argmax(1) == labels, None, None
        facts = {"lipschitz_bound": None, "logit_error": None, "measured_logit_error": None}
    else:
        logits, correct, radii = certification.logits, certification.correct, certification.radii
        certified = certification.accuracy(eps_list)
        facts = certification.summary()
    margins = logit_margins(logits, labels)
    results = [
        {
            "eps": eps,
            "clean": mean(correct),
            "certified": None if certified is None else certified[format_eps(eps)],
        }
        for eps in eps_list
    ]
    record = {
        **facts,
        "certificate": model.certificate(),
        "n": int(len(labels)),
        "checkpoint": str(checkpoint.relative_to(run_dir)),
        "weights_sha256": payload.get("weights_sha256"),
        "margin_quantiles": quantiles(margins[correct]),
        "radius_quantiles": None if radii is None else quantiles(radii[correct]),
        "seconds": round(time.perf_counter() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    atomic_write_json(run_dir / "certify.json", record)
    print_certify_table(run_dir, record)
    log_to_tracked_run(
        run_dir,
        {
            "certify/clean": mean(correct),
            "certify/lipschitz_bound": record["lipschitz_bound"],
            **{f"certify/certified/{format_eps(r['eps'])}": r["certified"] for r in results},
        },
    )
    return record


def quantiles(values: torch.Tensor) -> dict[float, float] | None:
    """The 10/50/90% quantiles of correctly classified points' margins or radii."""
    return {q: float(values.quantile(q)) for q in (0.1, 0.5, 0.9)} if values.numel() else None


def print_certify_table(run_dir: Path, record: dict[str, Any]) -> None:
    title = f"dsnn certify: {run_dir} (n={record['n']})"
    print_eps_table(title, record, ("clean", "certified"), certificate_caption(record))


@hydra.main(version_base="1.3", config_path="pkg://dsnn_cli.conf", config_name="certify")
@guarded
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `dsnn certify`."""
    run_certify(cfg)
