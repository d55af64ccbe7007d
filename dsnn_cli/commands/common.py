"""What several commands share: a run's test points, fractions of masks, plain configs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from dsnn_cli.config import to_plain
from dsnn_cli.console import eps_label, percent, print_table
from dsnn_cli.data.loading import load_data
from dsnn_cli.data.subsets import stratified_subset
from dsnn_cli.errors import DsnnError, UsageError
from dsnn_cli.rundir import CONFIG, RunDir
from dsnn_cli.training.checkpoint import FINAL, find_checkpoint

log = logging.getLogger("dsnn")


def checkpoint_to_evaluate(run_dir: Path) -> Path:
    """The run's final checkpoint, or, for a run that did not finish, its latest epoch's, said
    in one warning: attacks and certificates of an unfinished run describe that epoch only."""
    checkpoint = find_checkpoint(run_dir)
    if checkpoint.name != FINAL:
        run = RunDir(run_dir)
        log.warning(
            "run=%s has not finished (status %s, %s epochs): using %s, its latest epoch's weights",
            run_dir,
            run.live_status(),
            run.summary.get("epochs", "?"),
            checkpoint.relative_to(run_dir),
        )
    return checkpoint


def run_data_config(run_dir: Path, data_root: str | None = None) -> dict[str, Any]:
    """The data group a run trained with (read from `data_root` instead of its root, if given)."""
    config_path = run_dir / CONFIG
    if not config_path.is_file():
        raise UsageError(f"run={run_dir} has no {CONFIG}; it was not written by dsnn train")
    data_cfg = dict(to_plain(OmegaConf.load(config_path).data))
    if data_root:
        data_cfg["root"] = str(data_root)
    return data_cfg


def evaluation_points(
    run_dir: Path,
    data_info: Mapping[str, Any],
    n: int | None = None,
    data_root: str | None = None,
    full_test_set: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The run's test images (its own data config, read from `data_root` if given), a
    class-stratified subset of n of them (all with `full_test_set`, not the run's limit_test).

    Returns images in [0, 1], labels, and the points' indices in the run's test split (the
    subsets are nested in n, so attacks with different n_examples share their first points).
    """
    data_cfg = run_data_config(run_dir, data_root)
    if data_info.get("kind", "image") != "image":
        raise UsageError(
            f"run={run_dir} was trained on data={data_cfg['name']}, not on images: nothing to attack"
        )
    if full_test_set:
        data_cfg["limit_test"] = None
    data = load_data(data_cfg, with_train=False)
    if len(data.classes) != int(data_info["num_classes"]):
        raise DsnnError(
            f"the test data has {len(data.classes)} classes, the model {data_info['num_classes']}"
        )
    idx = stratified_subset(data.test.targets, None if n is None else int(n), int(data_cfg["subset_seed"]))
    split = data.test.subset(idx)
    return split.inputs.float().div(255.0), split.targets, idx


def validation_points(
    run_dir: Path, n: int | None = None, data_root: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's validation images in [0, 1] (the `data.val_size` points its training held out),
    a class-stratified subset of n of them: what recipes and defaults are chosen on, so that
    the test set is read only for final tables."""
    data_cfg = run_data_config(run_dir, data_root)
    data = load_data(data_cfg, with_train=True)
    if data.val is None:
        raise UsageError(f"run={run_dir} was trained with data.val_size=0: it has no validation split")
    idx = stratified_subset(data.val.targets, None if n is None else int(n), int(data_cfg["subset_seed"]))
    split = data.val.subset(idx)
    return split.inputs.float().div(255.0), split.targets


def mean(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else 0.0


def print_eps_table(title: str, record: dict[str, Any], columns: tuple[str, ...], caption: str) -> None:
    """An attack or certify record: one row per eps with the accuracies in `columns`."""
    rows = [[eps_label(r["eps"]), *(percent(r[column]) for column in columns)] for r in record["results"]]
    print_table(title, ["eps", *columns], rows, caption=caption)


def certificate_caption(record: Mapping[str, Any]) -> str:
    """The rule a record's certified column follows, with its L and logit slack."""
    bound = record.get("lipschitz_bound")
    if bound is None:
        note = record.get("certificate_note") or "uncertified model"
        return f"no Lipschitz certificate ({note}): certified n/a"
    caption = (
        f"Lipschitz bound L = {bound:.6g} (float64 copy); certified: "
        "z_y - z_j - 2 delta > eps L ||w_y - w_j||"
    )
    if record.get("logit_error") is not None:
        caption += (
            f" for every j, delta = {record['logit_error']:.2g} >= 10x the measured float32 logit error "
            f"{record['measured_logit_error']:.2g}"
        )
    return caption
