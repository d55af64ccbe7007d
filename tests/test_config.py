"""Every option of every config group composes and builds at tiny size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config
from omegaconf import OmegaConf

from dsnn_cli.data.containers import DATASETS
from dsnn_cli.data.loading import load_data
from dsnn_cli.errors import UsageError
from dsnn_cli.models.families import FAMILIES
from dsnn_cli.models.integrators import INTEGRATORS
from dsnn_cli.models.networks import build_model
from dsnn_cli.robustness.attacks import ATTACKS, attack_settings
from dsnn_cli.training.losses import build_loss
from dsnn_cli.training.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule

CONF = Path(__file__).resolve().parents[1] / "conf"
VECTOR_DATA = {"sir", "skew", "abc", "cubic", "function"}
INFO = {
    "kind": "image",
    "in_channels": 3,
    "image_size": 16,
    "num_classes": 10,
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
}
VECTOR_INFO = {"kind": "vector", "dim_in": 3, "dim_out": 3}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_mirror_registries():
    names = {option: compose_config("train", [f"model={option}"]).model.name for option in options("model")}
    assert set(names.values()) == set(FAMILIES.names())
    assert all(names.get(family) == family for family in FAMILIES.names())  # each family has its option
    assert set(options("data")) == set(DATASETS.names())
    assert set(options("optim")) == set(OPTIMIZERS.names())
    assert set(options("scheduler")) == set(SCHEDULES.names())
    assert set(options("attack")) - {"none"} == set(ATTACKS.names())
    assert set(options("model/integrator")) == set(INTEGRATORS.names())
    assert set(options("loss")) == {"hinge", "cross_entropy", "lipschitz_margin", "mse"}


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("integrator", options("model/integrator"))
def test_every_model_with_every_integrator(model, integrator):
    cfg = compose_config("train", [*TINY, f"model={model}", f"model/integrator={integrator}"])
    family = FAMILIES[cfg.model.name]
    if integrator in family.integrators:
        if "image" in family.spaces:
            assert build_model(cfg.model, INFO)(torch.rand(2, 3, 16, 16)).shape == (2, 10)
        if "vector" in family.spaces:
            assert build_model(cfg.model, VECTOR_INFO)(torch.rand(5, 3)).shape == (5, 3)
        else:
            with pytest.raises(UsageError, match="works on image data, not vector data"):
                build_model(cfg.model, VECTOR_INFO)
    else:
        with pytest.raises(UsageError, match="does not admit"):
            build_model(cfg.model, INFO)


@pytest.mark.parametrize("data", options("data"))
def test_every_data_option_composes(data):
    overrides = [f"data={data}", "debug=smoke"] + (["data.root=/tmp/x"] if data == "imagefolder" else [])
    cfg = compose_config("train", overrides)
    assert cfg.data.name == data
    OmegaConf.to_container(cfg.data, resolve=True)  # every interpolation resolves
    if data in VECTOR_DATA:
        loaded = load_data({**OmegaConf.to_container(cfg.data), "n_train": 40, "n_test": 10, "val_size": 5})
        assert (len(loaded.train), len(loaded.val), len(loaded.test)) == (35, 5, 10)
        assert loaded.info()["kind"] == "vector" and torch.isfinite(loaded.train.targets).all()


@pytest.mark.parametrize("optim", options("optim"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_optimizer_and_schedule(optim, scheduler):
    cfg = compose_config("train", [*TINY, f"optim={optim}", f"scheduler={scheduler}"])
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer(cfg.optim, params)
    schedule = build_schedule(cfg.scheduler, opt, epochs=3)
    rates = [schedule.set(step / 4) for step in range(13)]
    assert all(rate >= 0 for rate in rates) and rates[0] <= cfg.optim.lr * (1 + 1e-12)


@pytest.mark.parametrize("loss", options("loss"))
def test_every_loss(loss):
    cfg = compose_config("train", [*TINY, f"loss={loss}"])
    targets = torch.randn(4, 10) if loss == "mse" else torch.tensor([0, 1, 2, 3])
    value = build_loss(cfg.loss)(torch.randn(4, 10), targets)
    assert value.ndim == 0 and float(value) >= 0


@pytest.mark.parametrize("attack", options("attack"))
def test_every_attack_option(attack):
    cfg = compose_config("attack", ["run=/tmp", f"attack={attack}", "debug=smoke"])
    if attack != "none":
        attack_settings(cfg.attack)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_builds_at_tiny_size(experiment):
    primary = "sweep" if experiment.startswith(("paper_table", "tune_")) else "train"  # sweep presets
    cfg = compose_config(primary, [f"experiment={experiment}", "debug=smoke"])
    if cfg.data.name in VECTOR_DATA:
        data = load_data({**OmegaConf.to_container(cfg.data), "n_train": 20, "n_test": 10, "val_size": 5})
        build_model(cfg.model, data.info())
        assert cfg.loss.name == "mse"
    else:
        build_model(cfg.model, INFO)


@pytest.mark.parametrize("name", ["train", "attack", "report", "sweep"])
def test_primary_configs_compose(name):
    overrides = ["run=/tmp"] if name == "attack" else []
    cfg = compose_config(name, overrides + ["debug=smoke"] if name != "report" else [])
    assert cfg is not None


def test_smoke_preset_leaves_data_alone_and_command_line_wins():
    cfg = compose_config("train", ["data=synthetic", "debug=smoke", "model.widths=[2,2,2]"])
    assert cfg.data.name == "synthetic"
    assert list(cfg.model.widths) == [2, 2, 2]
    assert cfg.trainer.limit_batches == 2 and cfg.trainer.device == "cpu"
    default = compose_config("train", ["debug=smoke"])
    assert default.data.name == compose_config("train").data.name
