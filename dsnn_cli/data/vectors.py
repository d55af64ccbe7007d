"""Regression data generated on the fly: ODE flow maps (exact to float64) and function fits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from dsnn_cli.data.containers import DATASETS, Split, VectorData, VectorSource
from dsnn_cli.data.subsets import split_validation, stratified_subset


def flow_map_data(system_name: str) -> Callable[[Mapping[str, Any], bool], VectorSource]:
    """Pairs (y0, Phi^dt(y0)) of an ODE's exact flow (RK4 with tiny steps, float64)."""

    def load(cfg: Mapping[str, Any], with_train: bool) -> VectorSource:
        from dsnn_cli.data.odes import SYSTEMS, flow_map

        system = SYSTEMS[system_name]
        dt = float(cfg["dt"])
        generator = torch.Generator().manual_seed(int(cfg["seed"]))

        def pairs(n: int) -> Split:
            y0 = system.sample(n, generator)
            return Split(y0, flow_map(system, y0, dt))

        train, test = pairs(int(cfg["n_train"])), pairs(int(cfg["n_test"]))
        info = {"system": system_name, "dt": dt, "rollout_steps": int(cfg["rollout_steps"])}
        return VectorSource(train, test, info)

    return load


@DATASETS.register("function")
def function_regression(cfg: Mapping[str, Any], with_train: bool) -> VectorSource:
    """x uniform on [lo, hi], y = |x| + sin x + x^2: a non-smooth scalar regression."""
    from dsnn_cli.data.odes import function_target

    lo, hi = (float(v) for v in cfg["interval"])
    generator = torch.Generator().manual_seed(int(cfg["seed"]))

    def pairs(n: int) -> Split:
        x = lo + (hi - lo) * torch.rand(n, 1, generator=generator, dtype=torch.float64)
        return Split(x, function_target(x))

    train, test = pairs(int(cfg["n_train"])), pairs(int(cfg["n_test"]))
    return VectorSource(train, test, {"system": None, "dt": None, "rollout_steps": 0})


for _system in ("sir", "skew", "abc", "cubic"):
    DATASETS.add(_system, flow_map_data(_system))


def vector_data(source: VectorSource, cfg: Mapping[str, Any]) -> VectorData:
    """Random (nested, seeded) validation and limit subsets of regression pairs, as float32."""
    seed = int(cfg["subset_seed"])
    val_size = int(cfg["val_size"] or 0)
    unlabeled = torch.zeros(len(source.train), dtype=torch.long)
    train_idx, val_idx = split_validation(unlabeled, val_size, cfg["limit_train"], seed)
    test_idx = stratified_subset(torch.zeros(len(source.test), dtype=torch.long), cfg["limit_test"], seed)

    def as_float(split: Split) -> Split:
        return Split(split.inputs.float(), split.targets.float())

    return VectorData(
        as_float(source.train.subset(train_idx)),
        as_float(source.train.subset(val_idx)) if val_size else None,
        as_float(source.test.subset(test_idx)),
        source.info,
    )
