"""Hydra entry point of `dsnn certify`."""

import hydra
from omegaconf import DictConfig

from dsnn_cli.commands import guarded


@hydra.main(version_base="1.3", config_path="pkg://dsnn_cli.conf", config_name="certify")
@guarded
def main(cfg: DictConfig) -> None:
    from dsnn_cli.evaluate import run_certify

    run_certify(cfg)
