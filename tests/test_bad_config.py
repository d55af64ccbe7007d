"""Bad config values are refused at the command's boundary: one UsageError line naming the key,
before any data is read or a run directory is written."""

from __future__ import annotations

import pytest
from conftest import TINY
from helpers import attack_config, compose_config

from dsnn_cli.commands.attack import run_attack
from dsnn_cli.commands.certify import run_certify
from dsnn_cli.commands.train import run_train
from dsnn_cli.errors import UsageError

TRAIN_CASES = [
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc'"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0"),
    (["trainer.max_epochs=2.5"], "trainer.max_epochs=2.5"),
    (["seed=abc"], "seed='abc'"),
    (["trainer.device=bogus"], "trainer.device=bogus"),
    (["trainer.batch_size=0"], "trainer.batch_size=0"),
    (["trainer.batch_size=-1"], "trainer.batch_size=-1"),
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size=0"),
    (["trainer.limit_batches=0"], "trainer.limit_batches=0"),
    (["trainer.select=foo"], "trainer.select='foo'"),
    (["trainer.resume=maybe"], "trainer.resume='maybe'"),
    (["trainer.threads=0"], "trainer.threads=0"),
    (["trainer.keep_memory=sometimes"], "trainer.keep_memory='sometimes'"),
    (["loss=hinge", "loss.margin=-1"], "loss.margin=-1"),
    (["loss=hinge", "loss.margin=abc"], "loss.margin='abc'"),
    (["loss=lipschitz_margin", "loss.temperature=0"], "loss.temperature=0"),
    (["loss=lipschitz_margin", "loss.eps=-0.1"], "loss.eps=-0.1"),
    (["loss=cross_entropy", "loss.label_smoothing=1.5"], "loss.label_smoothing=1.5"),
    (["optim.lr=0"], "optim.lr=0"),
    (["optim.lr=abc"], "optim.lr='abc'"),
    (["optim.weight_decay=-1"], "optim.weight_decay=-1"),
    (["optim=sgd", "optim.momentum=1.5"], "optim.momentum=1.5"),
    (["scheduler.final_factor=2"], "scheduler.final_factor=2"),
    (["scheduler=onecycle", "scheduler.peak_epoch=0"], "scheduler.peak_epoch=0"),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0"),
    (["model.widths=[]"], "model.widths=[]"),
    (["model.widths=[4,0]"], "model.widths=[4, 0]"),
    (["model.steps=0"], "model.steps=0"),
    (["model.substeps=0"], "model.substeps=0"),
    (["model.kernel_size=2"], "model.kernel_size=2"),
    (["model.h_expansive=-1"], "model.h_expansive=-1"),
    (["model.normalize=foo"], "model.normalize='foo'"),
    (["model.dense_orthogonal=givens"], "model.dense_orthogonal='givens'"),
    (["model.activation.alpha=2"], "model.activation.alpha=2"),
    (["model.activation.name=relu"], "model.activation=relu has no setting alpha"),
    (["data.val_size=-1"], "data.val_size=-1"),
    (["data.n_train=0"], "data.n_train=0"),
    (["data.noise=-1"], "data.noise=-1"),
    (["data.limit_test=0"], "data.limit_test=0"),
    (["data.augment=yes"], "data.augment='yes'"),
    (["data.augment=mirror"], "crop_flip, crop, flip, none"),
    (["certify.eps=[-1]"], "eps=-1"),
]


@pytest.mark.parametrize(("overrides", "message"), TRAIN_CASES, ids=[" ".join(c[0]) for c in TRAIN_CASES])
def test_bad_train_settings_are_refused_before_the_run_starts(overrides, message, tmp_path):
    with pytest.raises(UsageError) as refused:
        run_train(compose_config("train", [*TINY, *overrides]), tmp_path / "run")
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "run").exists()


ATTACK_CASES = [
    ({"attack": {"name": "pgd", "n_examples": 0}}, "attack.n_examples=0"),
    ({"attack": {"name": "pgd", "steps": 0}}, "attack.steps=0"),
    ({"attack": {"name": "pgd", "step_size": -1}}, "attack.step_size=-1"),
    ({"attack": {"name": "pgd", "schedule": "linear"}}, "attack.schedule='linear'"),
    ({"attack": {"name": "apgd", "restarts": 0}}, "attack.restarts=0"),
    ({"eps": 1e9}, "exceeds the diameter of the [0, 1] pixel box"),
    ({"device": "bogus"}, "device=bogus"),
]


@pytest.mark.parametrize(("change", "message"), ATTACK_CASES, ids=[c[1][:30] for c in ATTACK_CASES])
def test_bad_attack_settings_are_refused(change, message, trained_run):
    attack = {"name": "pgd", "n_examples": 8, **change.get("attack", {})}
    top = {k: v for k, v in change.items() if k != "attack"}
    eps = top.pop("eps", 0.3)
    before = sorted(p.name for p in trained_run.iterdir())
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(")):
        run_attack(attack_config(str(trained_run), eps, attack, **top))
    assert sorted(p.name for p in trained_run.iterdir()) == before  # nothing written


@pytest.mark.parametrize(
    ("override", "message"),
    [("n_examples=0", "n_examples=0"), ("batch_size=0", "batch_size=0"), ("eps=[1e9]", "diameter")],
)
def test_bad_certify_settings_are_refused(override, message, trained_run):
    cfg = compose_config("certify", [f"run={trained_run}", override])
    with pytest.raises(UsageError, match=message):
        run_certify(cfg)
