"""The attack suite: minimal perturbations of a linear model, cascades, and the strength order."""

from __future__ import annotations

import pytest
import torch
from helpers import attack_config
from test_attacks import linear_problem

import dsnn_cli
from dsnn_cli.commands.attack import run_attack
from dsnn_cli.robustness.attacks import ATTACKS, l2_norms

FAST = {
    "pgd": {"steps": 50},
    "apgd": {"steps": 50},
    "autoattack": {"steps": 50, "square_queries": 300},
}


@pytest.mark.parametrize("name", ["pgd", "apgd", "autoattack"])
@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_strong_attacks_find_the_minimal_perturbations(name, eps):
    model, x, y, dist = linear_problem(eps)
    result = ATTACKS[name](model, x, y, eps, **FAST[name])
    assert float(result.robust.float().mean()) == pytest.approx(float((dist > eps).float().mean()), abs=1e-9)
    assert bool((l2_norms(result.adversarial - x) <= eps * (1 + 1e-5)).all())


def test_paper_protocol_is_weaker():
    """10 steps of 0.025 eps reach at most 0.25 eps past the start: points at 0.7 eps survive."""
    eps = 0.1
    model, x, y, dist = linear_problem(eps)
    paper = ATTACKS["paper"](model, x, y, eps)
    strong = ATTACKS["pgd"](model, x, y, eps)
    assert float(paper.robust.float().mean()) > float(strong.robust.float().mean())


def test_autoattack_cascade_never_raises_accuracy(trained_run):
    model = dsnn_cli.load_model(trained_run)
    x = torch.rand(48, 3, 16, 16)
    y = model(x).argmax(1)
    result = ATTACKS["autoattack"](model, x, y, 0.5, steps=20, square_queries=200)
    names = [name for name, _ in result.stages]
    assert names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    values = [1.0] + [value for _, value in result.stages]
    assert all(b <= a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(float(result.robust.float().mean()))
    assert bool((l2_norms(result.adversarial - x) <= 0.5 * (1 + 1e-5)).all())


def test_strong_cascade_beats_the_paper_protocol_on_a_trained_model(trained_lipschitz_run):
    run, eps = str(trained_lipschitz_run), [0.25, 0.5]
    strong = run_attack(
        attack_config(run, eps, {"name": "apgd", "n_examples": 100, "steps": 30}, device="cpu")
    )
    weak = run_attack(attack_config(run, eps, {"name": "paper", "n_examples": 100}, device="cpu"))
    for s, w in zip(strong["results"], weak["results"], strict=True):
        assert s["robust"] <= w["robust"]
        assert s["certified"] <= s["robust"] <= s["clean"]
        assert [stage["attack"] for stage in s["stages"]] == ["apgd-ce", "apgd-t"]


@pytest.mark.slow
def test_default_pgd_is_not_improved_much_by_doubling_steps_or_restarts(trained_lipschitz_run):
    """The strength criterion of benchmarks/bench_attack_strength.py on the synthetic run."""
    model = dsnn_cli.load_model(trained_lipschitz_run)
    from dsnn_cli.commands.attack import evaluation_points

    x, y, _ = evaluation_points(trained_lipschitz_run, model.config["data_info"])
    base = float(ATTACKS["pgd"](model, x, y, 0.5).robust.float().mean())
    for settings in ({"steps": 100}, {"restarts": 2}):
        stronger = float(ATTACKS["pgd"](model, x, y, 0.5, **settings).robust.float().mean())
        assert base - stronger <= 0.01, settings


def reference_autoattack_robust(model, x, y, eps: float) -> torch.Tensor:
    """Per-point robustness under the reference AutoAttack (Croce & Hein's own code, its
    `run_standard_evaluation`), APGD-CE then APGD-T as its standard version sets them."""
    from pyautoattack import AutoAttack

    reference = AutoAttack(model, attacks=["apgd-ce", "apgd-t"], norm="L2", eps=eps, seed=0, version="custom")
    reference.verbose = False
    reference.apgd_targeted.n_target_classes = 9
    adversarial, _ = reference.run_standard_evaluation(x, y, batch_size=250)
    with torch.no_grad():
        return model(adversarial).argmax(1) == y


def test_pgd_and_apgd_verdicts_agree_with_the_reference_autoattack(trained_lipschitz_run):
    """Within one point of robust accuracy on 200 test points of a trained certified model, at
    an eps where attacks matter (robust 17.5% of 33.5% clean)."""
    from dsnn_cli.commands.common import evaluation_points

    eps = 0.06
    model = dsnn_cli.load_model(trained_lipschitz_run).eval()
    x, y, _ = evaluation_points(trained_lipschitz_run, model.config["data_info"], 200)
    reference = reference_autoattack_robust(model, x, y, eps)
    clean = float((model(x).argmax(1) == y).float().mean())
    assert 0.05 < float(reference.float().mean()) < clean - 0.05
    ours = {name: ATTACKS[name](model, x, y, eps).robust for name in ("pgd", "apgd")}
    for name, robust in ours.items():
        assert abs(float(robust.float().mean()) - float(reference.float().mean())) <= 0.01, name
    assert torch.equal(ours["apgd"], reference)  # the same components and seed break the same points
