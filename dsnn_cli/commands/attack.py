"""Hydra entry point of `dsnn attack`."""

import hydra
from omegaconf import DictConfig

from dsnn_cli.commands import guarded


@hydra.main(version_base="1.3", config_path="pkg://dsnn_cli.conf", config_name="attack")
@guarded
def main(cfg: DictConfig) -> None:
    from dsnn_cli.evaluate import run_attack

    run_attack(cfg)
