"""`trainer.ema`: the scored model is the stated average of the trained weights, averaging never
disturbs training, and the averaged model's bound is proven afresh."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, compose_config
from helpers import measured_lipschitz

import dsnn_cli
import dsnn_cli.training.loop as loop
from dsnn_cli.commands.train import run_train
from dsnn_cli.errors import UsageError
from dsnn_cli.robustness.certificates import float64_copy
from dsnn_cli.training.averaging import WeightAverage
from dsnn_cli.training.checkpoint import load_checkpoint, model_from_checkpoint

SHORT = [*TINY, "model=lipschitz", "trainer.limit_batches=3", "trainer.max_epochs=2", "trainer.select=last"]


def final_weights(run) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "final.pt")["state_dict"]


def test_the_scored_model_is_the_moving_average_of_every_optimiser_step(tmp_path, monkeypatch):
    starts, trained = [], []

    class Recorded(WeightAverage):
        def __init__(self, model, decay):
            super().__init__(model, decay)
            starts.append(self.state_dict())

    def record(average, model):
        real_averaged(average, model)
        trained.append({k: p.detach().clone() for k, p in model.named_parameters()})

    real_averaged = loop.averaged
    monkeypatch.setattr(loop, "WeightAverage", Recorded)
    monkeypatch.setattr(loop, "averaged", record)
    run_train(compose_config("train", [*SHORT, "trainer.ema=0.7"]), tmp_path / "run")
    expected = {k: v.double() for k, v in starts[0].items()}
    for weights in trained:  # clean and replayed steps alike
        expected = {k: 0.7 * expected[k] + 0.3 * weights[k].double() for k in expected}
    final = final_weights(tmp_path / "run")
    assert len(trained) > 6  # two epochs of three batches, and the replays of the last 30%
    for name, value in expected.items():
        assert torch.allclose(final[name].double(), value, rtol=1e-5, atol=1e-6), name
    assert any(not torch.allclose(final[k], trained[-1][k]) for k in expected)  # not the last step's


def test_the_average_never_changes_training_and_decay_zero_is_the_run_without_one(tmp_path):
    run_train(compose_config("train", SHORT), tmp_path / "plain")
    run_train(compose_config("train", [*SHORT, "trainer.ema=0.9"]), tmp_path / "averaged")
    plain_last = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["state_dict"]
    trained = load_checkpoint(tmp_path / "averaged" / "checkpoints" / "last.pt")["training"]["trained"]
    for key, value in trained.items():  # the optimiser went on from its own weights, bit for bit
        assert torch.equal(plain_last[key], value), key
    run_train(compose_config("train", [*SHORT, "trainer.ema=0"]), tmp_path / "zero")
    plain, zero = final_weights(tmp_path / "plain"), final_weights(tmp_path / "zero")
    assert plain.keys() == zero.keys()
    for key in plain:
        assert torch.equal(plain[key], zero[key]), key
    read = lambda run: json.loads((run / "summary.json").read_text())  # noqa: E731
    assert read(tmp_path / "plain")["test_acc"] == read(tmp_path / "zero")["test_acc"]


def test_the_averaged_model_is_certified_with_a_bound_proven_for_its_own_weights(tmp_path):
    run_train(compose_config("train", [*SHORT, "trainer.ema=0.9"]), tmp_path / "run")
    model = dsnn_cli.load_model(tmp_path / "run")
    bound = dsnn_cli.lipschitz_bound(model)
    assert bound <= 1.0 + 1e-5  # sigma calibrated on the averaged W, not the trained one
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["lipschitz_bound"] == pytest.approx(bound, rel=1e-9)
    logits = float64_copy(model)
    x = torch.rand(8, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert measured_lipschitz(logits, x) <= bound * (1 + 1e-6)  # the logits, measured
    saved = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt"))
    sigmas = lambda m: {k: v.clone() for k, v in m.state_dict().items() if k.endswith("sigma")}  # noqa: E731
    before = sigmas(saved)
    saved.calibrate()  # each epoch's checkpoint holds the norms proven for its own (averaged) weights
    assert before and all(torch.equal(before[k], value) for k, value in sigmas(saved).items())


@pytest.mark.parametrize("decay", ["1", "1.5", "-0.1", "abc"])
def test_a_decay_outside_zero_to_one_is_refused_before_the_run_starts(decay, tmp_path):
    with pytest.raises(UsageError, match=r"trainer\.ema"):
        run_train(compose_config("train", [*TINY, f"trainer.ema={decay}"]), tmp_path / "run")
    assert not (tmp_path / "run" / "summary.json").exists()
