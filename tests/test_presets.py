"""The paper's presets compose and run a smoke epoch; CIFAR-100 starts from CIFAR-10 weights."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, compose_config

from dsnn_cli.commands.train import initialise_from, matching_run, run_train
from dsnn_cli.errors import UsageError
from dsnn_cli.training.checkpoint import load_model

REGIMES = ["resnet", "naive", "nonexpansive", "lipschitz", "lipschitz_flexible"]
SMALL = [*TINY, "model.widths=[4,4,4]", "model.steps=2"]


def test_table_presets_sweep_the_paper_grid():
    cfg = compose_config(
        "sweep",
        ["experiment=paper_table_cifar10"],
    )
    assert cfg.model.widths == [32, 64, 128] and cfg.model.steps == 4 and cfg.model.substeps == 2
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.01 and cfg.optim.momentum == 0.9
    assert cfg.scheduler.name == "step" and cfg.scheduler.step_size == 30 and cfg.scheduler.gamma == 0.1
    assert cfg.trainer.max_epochs == 100 and cfg.trainer.batch_size == 128 and cfg.data.augment
    assert (
        cfg.loss.name == "hinge"
        and cfg.attack.name == "autoattack"
        and cfg.attack.n_examples == 1024  # the paper protocol's 1,024 points, for both attacks
        and list(cfg.sweep.extra_attacks) == ["paper"]
    )


@pytest.mark.parametrize("regime", REGIMES)
def test_every_regime_of_the_cifar10_table_runs_a_smoke_epoch(regime, tmp_path):
    cfg = compose_config("train", ["experiment=paper_cifar10", f"model={regime}", *SMALL])
    summary = run_train(cfg, tmp_path / regime)
    assert summary["status"] == "done" and summary["epochs"] == 1


def test_cifar100_preset_starts_from_cifar10_weights_with_a_new_head(tmp_path):
    source = tmp_path / "cifar10"
    run_train(compose_config("train", ["experiment=paper_cifar10", *SMALL]), source)
    cifar100 = ["experiment=paper_cifar100", *SMALL, "data.num_classes=100", f"trainer.init_from={source}"]
    summary = run_train(compose_config("train", cifar100), tmp_path / "cifar100")
    assert summary["status"] == "done"
    # the transfer itself: every tensor but the head's, before any training
    from dsnn_cli.models.networks import build_model

    cfg = compose_config("train", cifar100)
    torch.manual_seed(5)
    fresh = build_model(cfg.model, {**load_model(source).config["data_info"], "num_classes": 100})
    initialise_from(fresh, source, cfg)
    old = load_model(source).state_dict()
    new = fresh.state_dict()
    assert new["head.linear.weight"].shape[0] == 100 and old["head.linear.weight"].shape[0] == 10
    lift = "stem.conv.weight"
    assert torch.equal(new[lift], old[lift])


def test_init_from_a_sweep_picks_the_job_with_the_same_model_and_loss(tmp_path):
    for job, margin in (("0", 0.07), ("1", 0.15)):
        run_train(
            compose_config("train", ["experiment=paper_cifar10", *SMALL, f"loss.margin={margin}"]),
            tmp_path / job,
        )
    cfg = compose_config("train", ["experiment=paper_cifar10", *SMALL, "loss.margin=0.15"])
    assert matching_run(tmp_path, cfg) == tmp_path / "1"
    cfg = compose_config("train", ["experiment=paper_cifar10", *SMALL, "loss.margin=0.3"])
    with pytest.raises(UsageError, match="0 finished jobs"):
        matching_run(tmp_path, cfg)


def test_cifar100_preset_refuses_to_start_without_init_from(tmp_path):
    with pytest.raises(UsageError, match="trainer.init_from"):
        run_train(compose_config("train", ["experiment=paper_cifar100", *SMALL]), tmp_path / "x")


def test_certify_preset_trains_a_one_lipschitz_model_for_its_target_radius(tmp_path):
    cfg = compose_config("train", ["experiment=certify_cifar10", *SMALL])
    assert cfg.loss.name == "lipschitz_margin" and cfg.loss.eps == 0.3 and cfg.model.normalize == "mean"
    summary = run_train(cfg, tmp_path / "certify")
    assert summary["status"] == "done"
    assert summary["lipschitz_bound"] <= 1.0 + 1e-5
    assert {"0", "0.141176", "0.3", "0.5"} <= set(summary["certified"])


def test_gpu_certify_preset_is_the_default_recipe_scaled_up(tmp_path):
    cfg = compose_config("train", ["experiment=certify_cifar10_gpu"])
    default = compose_config("train", [])
    assert cfg.model.widths == [32, 64, 128] and cfg.model.steps == 4 and cfg.trainer.max_epochs == 200
    assert cfg.model.name == default.model.name and cfg.loss == default.loss
    summary = run_train(compose_config("train", ["experiment=certify_cifar10_gpu", *SMALL]), tmp_path / "gpu")
    assert summary["status"] == "done" and summary["lipschitz_bound"] <= 1.0 + 1e-5
