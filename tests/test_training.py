"""Training runs: summary contents, checkpoints, bit-for-bit resumption."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, compose_config

import dsnn_cli
from dsnn_cli.commands.train import run_train
from dsnn_cli.errors import DsnnError, UsageError
from dsnn_cli.training.checkpoint import load_checkpoint


def test_summary_and_artifacts(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["status"] == "done"
    for key in ("test_acc", "val_acc"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["test_acc"] > 0.3  # synthetic prototypes are learnable in 3 epochs
    assert summary["lipschitz_bound"] is None and summary["certified"] is None
    assert summary["n_params"] > 0 and summary["epochs"] == 3 and summary["seconds"] > 0
    assert summary["seed"] == 0 and "git_commit" in summary
    assert set(summary["versions"]) == {"dsnn", "torch"}
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert (trained_run / "config.yaml").is_file()
    payload = torch.load(trained_run / "checkpoints" / "final.pt", weights_only=True)
    assert payload["model_config"]["name"] == "resnet" and "state_dict" in payload


def test_load_model_contract(trained_run):
    model = dsnn_cli.load_model(trained_run)
    assert not model.training
    p = next(model.parameters())
    assert p.dtype == torch.float32 and p.device.type == "cpu"
    logits = model(torch.rand(3, 3, 16, 16))
    assert logits.shape == (3, 10)
    assert dsnn_cli.lipschitz_bound(model) is None


def test_certified_run_records_bound_and_certified(trained_lipschitz_run):
    summary = json.loads((trained_lipschitz_run / "summary.json").read_text())
    model = dsnn_cli.load_model(trained_lipschitz_run)
    assert summary["lipschitz_bound"] == pytest.approx(dsnn_cli.lipschitz_bound(model), rel=1e-9)
    certified = summary["certified"]
    assert set(certified) >= {"0", "0.3"}
    values = [certified[k] for k in sorted(certified, key=float)]
    assert values == sorted(values, reverse=True)  # shrinks with eps
    assert certified["0"] <= summary["test_acc"] + 1e-12


@pytest.mark.parametrize("ema", ["null", "0.9"])
def test_resume_is_bit_for_bit(ema, tmp_path, monkeypatch):
    cfg = compose_config(
        "train",
        [*TINY, "model=lipschitz", "trainer.limit_batches=3", "trainer.max_epochs=2", f"trainer.ema={ema}"],
    )
    straight = tmp_path / "straight"
    run_train(cfg, straight)

    import dsnn_cli.training.loop as training

    real_save = training.save_training_state

    def save_then_crash(run, model, optimizer, generator, state, best, **kwargs):
        real_save(run, model, optimizer, generator, state, best, **kwargs)
        if state["epoch"] == 1:
            raise KeyboardInterrupt  # the run is killed right after its first checkpoint

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(training, "save_training_state", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, resumed)
    assert json.loads((resumed / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(training, "save_training_state", real_save)
    cfg.trainer.resume = True
    run_train(cfg, resumed)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["training"].keys() == b["training"].keys()
    for key in a["training"].get("trained", {}):  # the weights the optimiser goes on from
        assert torch.equal(a["training"]["trained"][key], b["training"]["trained"][key]), key
    ma = (straight / "metrics.jsonl").read_text().splitlines()
    mb = (resumed / "metrics.jsonl").read_text().splitlines()
    measured = ("seconds", "peak_memory_mb", "rss_mb")  # by the machine, not by training
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k not in measured} for r in rows]  # noqa: E731
    assert strip(ma) == strip(mb)


@pytest.mark.parametrize("eps, start, replays", [(0.3, 0.0, 6), (0.3, 0.5, 3), ("null", 0.0, 0)])
def test_adversarial_training_replays_every_batch_at_its_fast_gradient_point(
    eps, start, replays, tmp_path, monkeypatch
):
    """loss.adversarial: from `start` on, each batch costs two optimiser steps, the second on
    the first's inputs moved eps along the input gradient that the first step's backward left."""
    import dsnn_cli.commands.train as train
    from dsnn_cli.robustness.attacks import fast_gradient, l2_norms

    calls = []

    def recording(x, grad, eps):
        calls.append((x, grad))
        return fast_gradient(x, grad, eps)

    monkeypatch.setattr(train, "fast_gradient", recording)
    cfg = compose_config(
        "train",
        [
            *TINY,
            "model=lipschitz",
            "trainer.limit_batches=3",
            "trainer.max_epochs=2",
            f"loss.adversarial.eps={eps}",
            f"loss.adversarial.start={start}",
        ],
    )
    run_train(cfg, tmp_path / "run")
    assert len(calls) == replays  # 2 epochs of 3 batches; with start 0.5, the second epoch's
    for x, grad in calls:
        assert grad.shape == x.shape and not x.requires_grad
        assert bool((l2_norms(grad) > 0).all())  # every point's own loss gradient
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["training"]["state"]
    assert state["steps"] == 6 + replays and state["images"] == 6 * 32


def test_a_step_leaves_the_gradient_of_its_loss_in_the_inputs(trained_lipschitz_run):
    """What the replay perturbs along: x.grad after `optimise` is the input gradient of the
    batch loss at the weights before the step."""
    from dsnn_cli.distributed import World
    from dsnn_cli.training.loop import make_task, optimise

    model = dsnn_cli.load_model(
        trained_lipschitz_run
    )  # eval mode: no power-iteration update between the passes
    task = make_task(
        {"name": "lipschitz_margin", "eps": 0.1, "lipschitz": 1.0, "temperature": 0.25}, None, "x"
    )
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 2
    probe = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(task.loss(model, model(probe), y), probe)
    x.requires_grad_(True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss, _ = optimise(model, model, task, optimizer, x, y, "32", World(), batch=8)
    torch.testing.assert_close(x.grad, expected)
    assert any(
        not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)
    )  # and it stepped
    assert loss > 0


def test_finished_run_dir_is_refused(trained_run):
    with pytest.raises(UsageError, match="already holds a finished run"):
        run_train(compose_config("train", TINY), trained_run)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DsnnError, match="corrupt or unreadable"):
        load_checkpoint(bad)


def test_failed_run_is_recorded(tmp_path, monkeypatch):
    def diverge(*args, **kwargs):
        raise FloatingPointError("train_loss is nan at epoch 1")

    monkeypatch.setattr("dsnn_cli.commands.train.fit", diverge)
    with pytest.raises(FloatingPointError):
        run_train(compose_config("train", TINY), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "nan at epoch 1" in summary["error"]


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=-1",
        "loss.adversarial.eps=0",
        "loss.adversarial.eps=abc",
        "loss.adversarial.start=1.5",
        "loss.adversarial=0.3",
    ],
)
def test_bad_training_settings_are_refused_before_the_run_starts(override, tmp_path):
    cfg = compose_config("train", [*TINY, override])
    with pytest.raises(UsageError, match=override.split("=")[0].replace(".", r"\.")):
        run_train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "summary.json").exists()


IMAGE_FAMILIES = ["resnet", "naive", "nonexpansive", "lipschitz", "lipschitz_flexible", "volume"]


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_every_image_family_trains_in_the_smoke_preset(family, tmp_path):
    summary = run_train(compose_config("train", [*TINY, f"model={family}"]), tmp_path / "run")
    assert summary["status"] == "done" and 0.0 <= summary["test_acc"] <= 1.0
    certificate = summary["certificate"]
    if certificate["certified"]:
        assert summary["lipschitz_bound"] <= certificate["declared_bound"] * (1 + 1e-5)
    else:
        assert summary["lipschitz_bound"] is None and summary["certified"] is None


@pytest.mark.parametrize("skeleton", [["model.head=dense"], ["model.downsample=maxpool", "model.stem=conv"]])
def test_every_skeleton_of_the_default_model_trains_with_the_default_loss(skeleton, tmp_path):
    """The certification loss reads the head's rows in the same step as the forward pass: a
    dense head's power iteration must not break the backward pass (it once did)."""
    summary = run_train(compose_config("train", [*TINY, *skeleton]), tmp_path / "run")
    assert summary["status"] == "done" and summary["lipschitz_bound"] <= 1.0 + 1e-5


STRUCTURE_PRESETS = ["mass_sir", "mass_skew", "volume_abc", "splitting_function", "splitting_cubic"]


@pytest.mark.parametrize("experiment", STRUCTURE_PRESETS)
def test_structure_presets_train(experiment, tmp_path):
    overrides = [
        f"experiment={experiment}",
        "debug=smoke",
        "data.n_train=200",
        "data.n_test=50",
        "data.val_size=20",
        "trainer.max_epochs=2",
    ]
    summary = run_train(compose_config("train", overrides), tmp_path / "run")
    assert summary["status"] == "done" and summary["test_acc"] is None
    assert 0 <= summary["test_mse"] < 10
    if experiment.startswith("mass"):
        assert summary["invariant_drift"] < 1e-10 and summary["rollout_points"] > 0
    if experiment == "volume_abc":
        assert summary["det_jacobian_error"] < 1e-10
