"""Hydra entry point of `dsnn report`."""

import hydra
from omegaconf import DictConfig

from dsnn_cli.commands import guarded


@hydra.main(version_base="1.3", config_path="pkg://dsnn_cli.conf", config_name="report")
@guarded
def main(cfg: DictConfig) -> None:
    from dsnn_cli.report import run_report

    run_report(cfg.dir, compare=bool(cfg.compare))
