"""Hydra entry point of `dsnn train`."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from dsnn_cli.commands import guarded


@hydra.main(version_base="1.3", config_path="pkg://dsnn_cli.conf", config_name="train")
@guarded
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from dsnn_cli.train import run_train

    run_train(cfg, Path(HydraConfig.get().runtime.output_dir))
