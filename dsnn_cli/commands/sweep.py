"""Hydra entry point of `dsnn sweep` (always a multirun)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from dsnn_cli.commands import guarded


@hydra.main(version_base="1.3", config_path="pkg://dsnn_cli.conf", config_name="sweep")
@guarded
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from dsnn_cli.sweep import run_sweep_job

    run_sweep_job(cfg, Path(HydraConfig.get().runtime.output_dir))
