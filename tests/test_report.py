"""`dsnn report` on hand-made run directories: AUC, seed groups, compare mode and the plots."""

from __future__ import annotations

import csv
import json
import logging
import statistics
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dsnn_cli.commands import report as report_command
from dsnn_cli.commands.report import run_report
from dsnn_cli.report import groups, pictures
from dsnn_cli.report.figures import ACCURACY_SIZE_PX, adversarial_size_px, delta_for_display
from dsnn_cli.report.runs import collect_runs, robust_auc

CONFIG = {
    "data": {"name": "synthetic", "image_size": 8},
    "model": {"name": "lipschitz", "widths": [4, 8]},
    "optim": {"name": "adam", "lr": 0.01},
    "scheduler": {"name": "cosine"},
    "loss": {"name": "hinge", "margin": 0.3},
    "trainer": {"max_epochs": 2, "device": "cpu", "progress": None},
    "seed": 0,
    "certify": {"eps": [0.0, 0.3]},
}


def with_changes(config: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of config with dotted keys replaced: with_changes(c, **{"loss.margin": 0.15})."""
    config = json.loads(json.dumps(config))
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    return config


def make_run(
    root: Path,
    name: str,
    config: dict[str, Any] | None = CONFIG,
    attacks: dict[str, list[tuple[float, float]]] | None = None,
    clean: float = 0.8,
    certified: dict[float, float] | None = None,
    **summary: Any,
) -> Path:
    """A run directory: summary.json, config.yaml and attack-<name>.json with {eps: robust} results."""
    run = root / name
    run.mkdir(parents=True)
    fields = {"status": "done", "model": "lipschitz", "data": "synthetic", "loss": "hinge", "seed": 0}
    fields |= {"test_acc": clean, "val_acc": clean, "lipschitz_bound": 1.0, "epochs": 2, "seconds": 1.5}
    (run / "summary.json").write_text(json.dumps(fields | summary))
    if config is not None:
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    for attack, curve in (attacks or {}).items():
        results = [
            {"eps": eps, "clean": clean, "robust": robust, "certified": (certified or {}).get(eps)}
            for eps, robust in curve
        ]
        record = {"attack": attack, "settings": {}, "n": 100, "lipschitz_bound": 1.0, "results": results}
        (run / f"attack-{attack}.json").write_text(json.dumps(record))
    return run


def write_examples(run: Path, attack: str, counts: dict[str, int], channels: int = 3, size: int = 8) -> None:
    """attack-<attack>-examples.pt with counts[eps] examples per eps (labels 0.., predictions 1..)."""
    examples = {}
    for eps, k in counts.items():
        images = torch.rand(k, channels, size, size)
        adversarial = (images + float(eps) * torch.randn_like(images) / size).clamp(0, 1)
        labels = torch.arange(k) % 3
        examples[eps] = {
            "images": images,
            "adversarial": adversarial,
            "labels": labels,
            "predicted": (labels + 1) % 3,
        }
    torch.save(
        {"classes": ["plane", "car", "cat"], "examples": examples}, run / f"attack-{attack}-examples.pt"
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def flat(points: list[tuple[float, float]]) -> list[float]:
    return [x for point in points for x in point]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR", path
    return struct.unpack(">II", header[16:24])


CURVE = [(0.1, 0.6), (0.3, 0.4), (0.5, 0.1)]


def test_auc_is_the_trapezoid_area_divided_by_the_largest_eps(tmp_path):
    # (0, 0.8) clean, then CURVE: 0.1*(0.8+0.6)/2 + 0.2*(0.6+0.4)/2 + 0.2*(0.4+0.1)/2 = 0.22; / 0.5
    results = [{"eps": e, "clean": 0.8, "robust": r} for e, r in CURVE]
    assert robust_auc(results) == pytest.approx(0.44)
    # an eps-0 result is used as it is, not replaced by the clean accuracy
    at_zero = [{"eps": 0.0, "clean": 0.8, "robust": 0.7}, *results]
    assert robust_auc(at_zero) == pytest.approx((0.1 * 0.65 + 0.1 + 0.05) / 0.5)
    assert robust_auc([{"eps": 0.0, "clean": 0.8, "robust": 0.8}]) is None
    make_run(tmp_path, "a", attacks={"pgd": CURVE, "paper": [(0.5, 0.8)]})
    columns, rows = run_report(tmp_path)
    assert {"auc[pgd]", "auc[paper]", "robust[pgd]@0.3", "robust[paper]@0.5"} <= set(columns)
    row = read_csv(tmp_path / "report.csv")[0]
    assert float(row["auc[pgd]"]) == pytest.approx(0.44)
    assert float(row["auc[paper]"]) == pytest.approx(0.8)
    markdown = (tmp_path / "report.md").read_text()
    assert "| 44.00 |" in markdown and "auc[attack]: trapezoid area" in markdown
    assert "trapezoid" in report_command.__doc__


def test_seeds_of_one_config_are_grouped_with_mean_and_sample_std(tmp_path):
    other = with_changes(CONFIG, **{"loss.margin": 0.15})
    make_run(tmp_path, "a0", attacks={"pgd": [(0.3, 0.3)]}, clean=0.8, certified={0.3: 0.2})
    seed1 = with_changes(CONFIG, seed=1, **{"trainer.device": "cuda"})
    make_run(tmp_path, "a1", seed1, attacks={"pgd": [(0.3, 0.5)]}, clean=0.9, certified={0.3: 0.3}, seed=1)
    make_run(tmp_path, "b0", other, attacks={"pgd": [(0.3, 0.1)]}, clean=0.7)
    make_run(tmp_path, "c0", None, clean=0.5)  # no config.yaml: a group of its own
    run_report(tmp_path)
    groups = {row["runs"]: row for row in read_csv(tmp_path / "report_groups.csv")}
    assert set(groups) == {"a0 a1", "b0", "c0"}
    pair = groups["a0 a1"]
    assert pair["n"] == "2" and "loss.margin=0.3" in pair["group"] and "seed" not in pair["group"]
    assert float(pair["test_acc"]) == pytest.approx(0.85)
    assert float(pair["std(test_acc)"]) == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert float(pair["robust[pgd]@0.3"]) == pytest.approx(0.4)
    assert float(pair["std(robust[pgd]@0.3)"]) == pytest.approx(statistics.stdev([0.3, 0.5]))
    assert float(pair["certified@0.3"]) == pytest.approx(0.25)
    assert float(pair["auc[pgd]"]) == pytest.approx(statistics.fmean([(0.8 + 0.3) / 2, (0.9 + 0.5) / 2]))
    single = groups["b0"]
    assert single["n"] == "1" and "loss.margin=0.15" in single["group"] and single["std(test_acc)"] == ""
    assert "model.widths" not in single["group"]
    assert "no config.yaml" in groups["c0"]["group"]
    markdown = (tmp_path / "report.md").read_text()
    assert "## By configuration" in markdown
    assert "| 85.00 ± 7.07 |" in markdown and "| 70.00 |" in markdown


def test_a_new_model_family_does_not_list_its_defaults_as_differences():
    flats = [
        groups.flatten(CONFIG),
        groups.flatten(with_changes(CONFIG, **{"model.name": "resnet", "model.widths": [8, 16]})),
        groups.flatten(with_changes(CONFIG, **{"optim.lr": 0.1})),
    ]
    assert groups.distinguishing_keys(flats) == ["model.name", "optim.lr"]


def test_no_group_table_when_every_run_has_its_own_config(tmp_path):
    make_run(tmp_path, "a", attacks={"pgd": CURVE})
    make_run(tmp_path, "b", with_changes(CONFIG, **{"optim.lr": 0.1}), attacks={"pgd": CURVE})
    (tmp_path / "report_groups.csv").write_text("stale\n")
    run_report(tmp_path)
    assert not (tmp_path / "report_groups.csv").exists()
    assert "By configuration" not in (tmp_path / "report.md").read_text()


def test_failed_runs_stay_in_the_table(tmp_path):
    make_run(tmp_path, "ok", attacks={"pgd": CURVE})
    make_run(tmp_path, "broken", status="failed", test_acc=None, val_acc=None, epochs=0)
    columns, rows = run_report(tmp_path)
    by_run = {row["run"]: row for row in read_csv(tmp_path / "report.csv")}
    assert by_run["broken"]["status"] == "failed" and by_run["broken"]["test_acc"] == ""
    assert by_run["ok"]["status"] == "done"
    runs_table = (tmp_path / "report.md").read_text().split("\n\n")[0]
    table = [line for line in runs_table.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and table[0].count("|") == len(columns) + 1
    assert any("| broken | lipschitz | synthetic | failed |" in line for line in table)


def test_compare_gives_the_gap_between_the_paper_attack_and_the_strongest(tmp_path):
    attacks = {
        "paper": [(0.3, 0.55), (0.5, 0.4), (1.0, 0.3)],
        "apgd": [(0.3, 0.35)],
        "autoattack": [(0.3, 0.25), (0.5, 0.1)],
    }
    make_run(tmp_path, "a", attacks=attacks)
    make_run(tmp_path, "only_pgd", attacks={"pgd": CURVE})
    run_report(tmp_path)
    assert not (tmp_path / "report_compare.csv").exists()
    run_report(tmp_path, compare=True)
    rows = read_csv(tmp_path / "report_compare.csv")
    assert [(r["run"], float(r["eps"]), r["strong_attack"]) for r in rows] == [
        ("a", 0.3, "autoattack"),
        ("a", 0.5, "autoattack"),
    ]
    assert [float(r["gap_pp"]) for r in rows] == pytest.approx([30.0, 30.0])
    assert float(rows[0]["paper"]) == pytest.approx(0.55) and float(rows[0]["strong"]) == pytest.approx(0.25)
    markdown = (tmp_path / "report_compare.md").read_text()
    assert "| a | lipschitz | 0.3 | - | 55.00 | 25.00 | autoattack | +30.00 |" in markdown


def test_nothing_to_compare_is_one_log_line(tmp_path, caplog):
    make_run(tmp_path, "a", attacks={"paper": CURVE})
    with caplog.at_level(logging.INFO, logger="dsnn.report"):
        run_report(tmp_path, compare=True)
    assert [r.message for r in caplog.records if r.message.startswith("compare:")] == [
        "compare: no run has attack-paper.json and a strong attack (autoattack, apgd, pgd)"
    ]
    assert not (tmp_path / "report_compare.md").exists()


def test_plots_are_pngs_of_the_expected_size(tmp_path):
    run = make_run(tmp_path, "a", attacks={"pgd": CURVE, "paper": CURVE}, certified={0.3: 0.2, 0.5: 0.1})
    write_examples(run, "paper", {"0.3": 8})
    write_examples(run, "pgd", {"0.1": 2, "0.25": 3, "0.3": 0, "0.6": 8}, channels=1)
    run_report(tmp_path)
    assert png_size(tmp_path / "report.png") == ACCURACY_SIZE_PX == (1000, 550)
    # pgd beats paper; 0.3 has no examples, 0.25 is the closest eps with some: three rows
    assert png_size(tmp_path / "adversarial.png") == adversarial_size_px(3) == (600, 650)
    chosen = pictures.load_examples(collect_runs(tmp_path), tmp_path)
    assert (chosen.attack, chosen.eps, chosen.images.shape) == ("pgd", "0.25", (3, 1, 8, 8))
    write_examples(run, "autoattack", {"0.3": 6})
    run_report(tmp_path)
    assert png_size(tmp_path / "adversarial.png") == adversarial_size_px(4) == (600, 850)


def test_plots_are_skipped_without_attack_files(tmp_path, caplog):
    make_run(tmp_path, "a")
    (tmp_path / "report.png").write_bytes(b"stale")
    with caplog.at_level(logging.INFO, logger="dsnn.report"):
        run_report(tmp_path)
    assert not (tmp_path / "report.png").exists() and not (tmp_path / "adversarial.png").exists()
    messages = [r.message for r in caplog.records]
    assert "no run has attack or certificate results: no report.png" in messages
    assert any(m.endswith("no adversarial.png") for m in messages)


def test_many_runs_are_plotted_as_one_mean_curve_per_configuration(tmp_path, monkeypatch):
    cert = {0.5: 0.1}
    for seed in range(7):
        robust = 0.2 + 0.1 * (seed % 2)
        config = with_changes(CONFIG, seed=seed)
        make_run(tmp_path, f"s{seed}", config, attacks={"pgd": [(0.5, robust)]}, certified=cert)
    make_run(tmp_path, "t", with_changes(CONFIG, **{"optim.lr": 0.1}), attacks={"pgd": [(0.5, 0.9)]})
    drawn: list[list[pictures.Curve]] = []
    monkeypatch.setattr(
        "dsnn_cli.report.figures.plot_accuracy_curves", lambda curves, path, title="": drawn.append(curves)
    )
    run_report(tmp_path)
    (curves,) = drawn  # 7 runs * (robust + certified) + 1 = 15 curves > MAX_CURVES
    assert [(c.kind, c.label.endswith("(mean of 7)")) for c in curves] == [
        ("robust", True),
        ("certified", True),
        ("robust", False),
    ]
    assert flat(curves[0].points) == pytest.approx([0.0, 0.8, 0.5, (4 * 0.2 + 3 * 0.3) / 7])
    assert flat(curves[1].points) == pytest.approx([0.5, 0.1])
    assert flat(curves[2].points) == pytest.approx([0.0, 0.8, 0.5, 0.9]) and "optim.lr=0.1" in curves[2].label


def test_the_certified_curve_uses_every_radius_the_run_recorded(tmp_path, monkeypatch):
    """One attacked eps, but train certified a whole grid (and certify.json, when there, the full
    test set): the dashed curve has every point, and the richest record wins."""
    grid = {"0": 0.8, "0.0313725": 0.6, "0.141176": 0.4, "0.3": 0.25, "0.5": 0.1}
    run = make_run(tmp_path, "a", attacks={"pgd": [(0.3, 0.4)]}, certified={0.3: 0.25})
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "certified": grid}))
    drawn: list[list[pictures.Curve]] = []
    monkeypatch.setattr(
        "dsnn_cli.report.figures.plot_accuracy_curves", lambda curves, path, title="": drawn.append(curves)
    )
    run_report(tmp_path)
    certified = [c for c in drawn[-1] if c.kind == "certified"]
    assert [len(c.points) for c in certified] == [5]
    results = [{"eps": e, "clean": 0.8, "certified": c} for e, c in [(0.0, 0.79), (0.3, 0.24), (1.0, 0.0)]]
    (run / "certify.json").write_text(json.dumps({"results": results}))
    run_report(tmp_path)
    (certified,) = [c for c in drawn[-1] if c.kind == "certified"]
    assert flat(certified.points) == pytest.approx([0.0, 0.79, 0.3, 0.24, 1.0, 0.0])


def test_the_perturbation_is_shown_around_mid_grey():
    delta = torch.tensor([[-0.2, 0.0, 0.1]]).numpy()
    assert delta_for_display(delta)[0].tolist() == pytest.approx([0.0, 0.5, 0.75])
    assert delta_for_display(0 * delta).tolist() == [[0.5, 0.5, 0.5]]


def test_compare_uses_the_points_both_attacks_share(tmp_path):
    """The paper file covers points 0-3, the strong one points 2-5: only 2 and 3 are compared."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "done", "model": "lipschitz", "data": "cifar10"}))
    paper = {
        "attack": "paper",
        "n": 4,
        "indices": [0, 1, 2, 3],
        "results": [{"eps": 0.3, "clean": 1.0, "robust": 0.75, "robust_mask": "0111"}],
    }
    strong = {
        "attack": "autoattack",
        "n": 4,
        "indices": [2, 3, 4, 5],
        "results": [{"eps": 0.3, "clean": 1.0, "robust": 0.25, "robust_mask": "0100"}],
    }
    (run / "attack-paper.json").write_text(json.dumps(paper))
    (run / "attack-autoattack.json").write_text(json.dumps(strong))
    from dsnn_cli.commands.report import collect_runs, compare_rows

    [row] = compare_rows(collect_runs(tmp_path), tmp_path)
    # shared points 2 and 3: paper robust on both (1.0), strong on point 3 only (0.5)
    assert row["n"] == 2 and row["paper"] == 1.0 and row["strong"] == 0.5 and row["gap_pp"] == 50.0
