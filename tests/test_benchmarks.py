"""Every candidate of benchmarks/bench_budget.py composes and trains two batches: a typo in an
override shows here in seconds, not after a candidate's 24-minute budget."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import REPO
from helpers import compose_config

from dsnn_cli.commands.train import run_train


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = load_benchmark("bench_budget")
# Every row of every set, by name (a name means one list of overrides everywhere).
ROWS = {
    name: overrides
    for table in (BENCH.CANDIDATES, BENCH.PEERS, BENCH.ABLATIONS)
    for name, overrides in table.items()
}
# The benchmark's own budget overrides on tiny synthetic CIFAR-shaped data: two batches, no test.
SMOKE = [
    "data=synthetic",
    "data.n_train=128",
    "data.n_test=64",
    "data.val_size=32",
    "trainer.device=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_batches=2",
    "trainer.batch_size=32",
    "trainer.test=false",
    BENCH.CERTIFY_EPS,
]


def test_the_sets_name_each_row_once_with_the_same_overrides():
    for table in (BENCH.CANDIDATES, BENCH.PEERS, BENCH.ABLATIONS):
        for name, overrides in table.items():
            assert ROWS[name] == overrides, f"{name!r} means two things in bench_budget.py"
    assert set(SCORED) <= set(ROWS), "a scored row is no longer a benchmark row"


# One row per kind of table entry, also scored as a screen ranks them: ours, the uncertified
# baseline, a peer in Prach et al.'s skeleton.
SCORED = ["lipschitz (default)", "resnet (uncertified)", "convnet-XS AOL"]


@pytest.mark.parametrize("name", sorted(ROWS))
def test_every_candidate_trains_two_batches(name, tmp_path):
    run_dir = tmp_path / BENCH.run_name(name)
    summary = run_train(compose_config("train", [*SMOKE, *ROWS[name]]), run_dir)
    assert summary["status"] == "done" and summary["n_params"] > 0
    if name in SCORED:
        assert_scored_on_validation(run_dir, certified_model=summary["lipschitz_bound"] is not None)


def assert_scored_on_validation(run_dir, certified_model: bool) -> None:
    scores = BENCH.validation_scores(run_dir, n_pgd=4, root=None)  # the figures a screen ranks by
    by_radius = sorted(BENCH.RADII, key=BENCH.RADII.get)
    certified = [scores[f"val_certified_{radius}"] for radius in by_radius]
    if not certified_model:  # the uncertified baseline has no certified figure
        assert certified == [None] * len(BENCH.RADII)
    else:  # a certificate is never worth more than a correct answer, nor a larger radius more
        assert scores["val_clean"] >= certified[0] and certified == sorted(certified, reverse=True)
    assert 0 <= scores["val_pgd_0.3"] <= 1  # on its own first points: not comparable to the rest


def test_the_memory_benchmark_times_each_side_in_its_own_process():
    """bench_memory's children: the kept side keeps freed memory, the plain one does not."""
    module = load_benchmark("bench_memory")
    plain, kept = module.child("plain", 4, 2), module.child("kept", 4, 2)
    assert plain["kept"] is False and kept["kept"] is True
    assert plain["ms"] > 0 and kept["ms"] > 0 and kept["peak_mb"] > 0


def test_the_dense_pair_baseline_is_the_same_network():
    """bench_dense_pair times two paths of one map: the formed Q gives the factors' logits and
    gradients, so its ratio is a speed difference and nothing else."""
    import sys

    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        module = load_benchmark("bench_dense_pair")
        cfg = module.model_config(["model=lipschitz"], [4, 8, 16])
        factors = module.TrainingStep(cfg, 8, "32")
        dense = module.with_dense_q(module.TrainingStep(cfg, 8, "32"))
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert type(dense.model.dense[1].field.A).__name__ == "ShuffledBlockCayley"
    outputs, grads = [], []
    for step in (factors, dense):
        logits = step.model(step.x)
        logits.square().sum().backward()
        outputs.append(logits.detach())
        grads.append(step.model.dense[1].field.A.weight.grad.clone())
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert float(grads[0].abs().max()) > 0


def test_the_averaging_benchmark_scores_each_decay_of_one_trajectory(tmp_path):
    """bench_averaging: decay 0 is the trained weights of the last step, and a copy of the run
    holds each average with its norms proven for it."""
    from dsnn_cli.training.checkpoint import load_checkpoint, model_from_checkpoint

    module = load_benchmark("bench_averaging")
    run_dir = tmp_path / "trained"
    averages = module.train_with_averages(compose_config("train", SMOKE), run_dir, [0.0, 0.5])
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")["state_dict"]
    assert all(torch.equal(last[k], v) for k, v in averages[0.0].shadow.items())
    copy = module.averaged_run(run_dir, averages[0.5])
    saved = load_checkpoint(copy / "checkpoints" / "final.pt")["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in averages[0.5].shadow.items())
    assert any(not torch.equal(last[k], v) for k, v in averages[0.5].shadow.items())
    model = model_from_checkpoint(load_checkpoint(copy / "checkpoints" / "final.pt"))
    sigmas = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("sigma")}
    model.calibrate()
    assert sigmas and all(torch.equal(v, model.state_dict()[k]) for k, v in sigmas.items())
