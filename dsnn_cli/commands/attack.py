"""`dsnn attack`: rebuild a run's model, attack it at every eps, certify it, record it.

Writes ``RUN_DIR/attack-<name>.json``: the attack's settings, ``n``, the Lipschitz bound and
``results``, a list of ``{eps, clean, robust, certified}`` (fractions; ``certified`` is null
without a bound). A repeat with the same settings merges its eps values into the file; any
other repeat replaces it. Either way the file is replaced atomically.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
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
from dsnn_cli.config import to_plain
from dsnn_cli.console import progress_bar
from dsnn_cli.devices import exact_float32, peak_memory_mb, resolve_device
from dsnn_cli.errors import DsnnError
from dsnn_cli.models.networks import certificate_note
from dsnn_cli.robustness.attacks import attack_settings, build_attack
from dsnn_cli.robustness.certificates import certify, check_radii, format_eps, parse_eps
from dsnn_cli.rundir import atomic_write_json, read_json
from dsnn_cli.training.checkpoint import load_checkpoint, model_from_checkpoint
from dsnn_cli.training.loggers import log_to_tracked_run

log = logging.getLogger("dsnn.attack")


def attack_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / f"attack-{name}.json"


@exact_float32()  # certificates are stated for exact float32 and float64 arithmetic
def run_attack(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Attack the model of ``cfg.run`` at every ``cfg.eps`` and write the attack file."""
    started = time.perf_counter()
    run_dir = Path(str(cfg["run"])).expanduser()
    eps_list = parse_eps(cfg["eps"])
    attack_cfg = dict(to_plain(cfg["attack"]))
    settings = attack_settings(attack_cfg)
    attack = build_attack(attack_cfg["name"], settings)
    device = resolve_device(str(cfg["device"]), key="device")
    checkpoint = checkpoint_to_evaluate(run_dir)
    payload = load_checkpoint(checkpoint)
    model = model_from_checkpoint(payload).eval()
    model.to(device)
    data_info = model.config["data_info"]
    check_radii(eps_list, data_info)
    images, labels, indices = evaluation_points(
        run_dir, data_info, attack_cfg["n_examples"], cfg["data_root"]
    )
    images, labels = images.to(device), labels.to(device)
    certification = certify(model, images, labels, device=device)  # the float32 model as it runs
    facts = certification.summary() if certification is not None else {"lipschitz_bound": None}
    log.info(
        "attack=%s on %d test images of %s, eps %s, Lipschitz bound %s",
        attack_cfg["name"],
        len(labels),
        run_dir,
        eps_list,
        facts["lipschitz_bound"],
    )
    results = []
    examples: dict[str, dict[str, torch.Tensor]] = {}
    with progress_bar(cfg["progress"]) as bar:
        task = bar.add_task(f"attack {attack_cfg['name']}", total=len(eps_list), status="")
        for eps in eps_list:
            outcome = attack(model, images, labels, eps)
            certified = None
            if certification is not None:
                certified = certification.certified(eps).to(device) & outcome.correct
                check_certificates(outcome, certified, eps)
            results.append(
                {
                    "eps": eps,
                    "clean": mean(outcome.correct),
                    "robust": mean(outcome.robust),
                    "certified": None if certified is None else mean(certified),
                    "stages": [{"attack": name, "robust": value} for name, value in outcome.stages],
                    "robust_mask": "".join("1" if r else "0" for r in outcome.robust.tolist()),
                }
            )
            examples[format_eps(eps)] = broken_examples(model, images, labels, outcome)
            bar.update(task, advance=1, status=f"eps {eps:.4g}: robust {results[-1]['robust']:.3f}")
    record = {
        "attack": attack_cfg["name"],
        "settings": settings,
        "n": int(len(labels)),
        "n_examples": attack_cfg["n_examples"],
        "indices": indices.tolist(),  # test-split indices of the points, in robust_mask order
        **facts,
        "certificate_note": certificate_note(model.certificate()),
        "checkpoint": str(checkpoint.relative_to(run_dir)),
        "weights_sha256": payload.get("weights_sha256"),
        "device": str(device),
        "peak_memory_mb": peak_memory_mb(device),
        "seconds": round(time.perf_counter() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    record = merge_with_previous(attack_path(run_dir, attack_cfg["name"]), record)
    atomic_write_json(attack_path(run_dir, attack_cfg["name"]), record)
    save_examples(run_dir, attack_cfg["name"], examples, model.config["data_info"].get("classes"))
    print_attack_table(run_dir, record)
    log_to_tracked_run(run_dir, attack_metrics(record))
    return record


def attack_metrics(record: dict[str, Any]) -> dict[str, float]:
    """An attack record's figures as tracker metrics: attack/<name>/robust/<eps> and its clean."""
    name = record["attack"]
    metrics = {}
    for result in record["results"]:
        eps = format_eps(result["eps"])
        metrics[f"attack/{name}/robust/{eps}"] = result["robust"]
        metrics[f"attack/{name}/certified/{eps}"] = result["certified"]
        metrics[f"attack/{name}/clean"] = result["clean"]
    return metrics


EXAMPLES_PER_EPS = 8


def examples_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / f"attack-{name}-examples.pt"


def broken_examples(model, images, labels, outcome, k: int = EXAMPLES_PER_EPS) -> dict[str, torch.Tensor]:
    """Up to k points the attack broke, from as many classes as possible (the first broken point
    of each class, then the second, ...): clean and adversarial images with both predictions."""
    idx = spread_over_classes((outcome.correct & ~outcome.robust).nonzero().squeeze(1), labels, k)
    clean, adversarial = images[idx].cpu(), outcome.adversarial[idx].cpu()
    predicted = torch.empty(0, dtype=torch.long)
    if idx.numel():  # an empty batch is not a valid FFT size for the orthogonal layers
        with torch.no_grad():
            predicted = model(outcome.adversarial[idx]).argmax(1).cpu()
    return {"images": clean, "adversarial": adversarial, "labels": labels[idx].cpu(), "predicted": predicted}


def spread_over_classes(indices: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The first k of `indices` taken round-robin over their labels, in index order within each."""
    ranks = torch.zeros_like(indices)
    for label in labels[indices].unique():
        members = (labels[indices] == label).nonzero().squeeze(1)
        ranks[members] = torch.arange(len(members), device=indices.device)
    order = sorted(range(len(indices)), key=lambda i: (int(ranks[i]), int(indices[i])))
    return indices[torch.tensor(order[:k], dtype=torch.long, device=indices.device)]


def save_examples(run_dir: Path, name: str, examples: dict, classes: list[str] | None) -> None:
    """Adversarial examples for `dsnn report`'s adversarial.png (a weights_only-safe dict)."""
    import io

    from dsnn_cli.rundir import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save({"classes": list(classes or []), "examples": examples}, buffer)
    atomic_write_bytes(examples_path(run_dir, name), buffer.getvalue())


def check_certificates(outcome, certified: torch.Tensor, eps: float) -> None:
    """No certified point may be broken: the certificate is stated for the float32 model the
    attack ran, so any break means the bound or the logit slack is wrong, which is an error."""
    broken = certified & ~outcome.robust
    if bool(broken.any()):
        raise DsnnError(
            f"{int(broken.sum())} certified points were broken at eps={eps}: the certificate does not "
            "hold for this model (please report this as a bug)"
        )


def merge_with_previous(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Keep earlier eps values when the earlier file used the same attack on the same points of
    the same weights (a checkpoint name alone would merge two epochs' last.pt)."""
    previous = read_json(path)
    as_json = json.loads(json.dumps(record))  # tuples become lists, as on disk
    same = previous and all(
        previous.get(k) == as_json[k] for k in ("settings", "n", "checkpoint", "weights_sha256")
    )
    if not same:
        return record
    mine = {round(r["eps"], 12) for r in record["results"]}
    kept = [r for r in previous.get("results", []) if round(r["eps"], 12) not in mine]
    record["results"] = sorted(kept + record["results"], key=lambda r: r["eps"])
    return record


def print_attack_table(run_dir: Path, record: dict[str, Any]) -> None:
    title = f"dsnn attack {record['attack']}: {run_dir} (n={record['n']})"
    print_eps_table(title, record, ("clean", "robust", "certified"), certificate_caption(record))


@hydra.main(version_base="1.3", config_path="pkg://dsnn_cli.conf", config_name="attack")
@guarded
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `dsnn attack`."""
    run_attack(cfg)
