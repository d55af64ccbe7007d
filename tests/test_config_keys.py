"""Every numeric key of every config group refuses a bad value with one line naming the key.

The keys are read from the YAML files themselves, so a key added to a group is covered the
day it is added: a value of the wrong type everywhere, and a negative count where counts live.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import compose_config

from dsnn_cli.commands.train import run_train
from dsnn_cli.errors import UsageError

CONF = Path(__file__).resolve().parents[1] / "conf"
TRAIN_GROUPS = ("data", "model", "optim", "scheduler", "loss", "trainer")
# Keys where any integer is meaningful (seeds), so only the wrong type is bad.
ANY_INTEGER = ("seed",)


def numeric_leaves(node: dict, prefix: str) -> dict[str, int | float]:
    leaves = {}
    for key, value in node.items():
        dotted = f"{prefix}.{key}"
        if isinstance(value, dict):
            leaves.update(numeric_leaves(value, dotted))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            leaves[dotted] = value
    return leaves


def bad_values() -> list[tuple[str, str, str]]:
    cases = []
    for group in TRAIN_GROUPS:
        for option in sorted((CONF / group).glob("*.yaml")):
            node = yaml.safe_load(option.read_text()) or {}
            for key, value in sorted(numeric_leaves(node, group).items()):
                cases.append((f"{group}={option.stem}", key, "abc"))
                if isinstance(value, int) and value >= 0 and not key.endswith(ANY_INTEGER):
                    cases.append((f"{group}={option.stem}", key, "-1"))
    return cases


CASES = bad_values()


def overrides_for(choice: str, key: str, value: str) -> list[str]:
    """The bad value on top of a cheap base: synthetic data unless the data group is tested."""
    base = ["debug=smoke"] if choice.startswith("data=") else ["debug=smoke", "data=synthetic"]
    root = ["data.root=/nonexistent"] if choice == "data=imagefolder" else []
    return [*base, choice, *root, f"{key}={value}"]


@pytest.mark.parametrize(("choice", "key", "value"), CASES, ids=[f"{c} {k}={v}" for c, k, v in CASES])
def test_every_numeric_key_refuses_a_bad_value(choice, key, value, tmp_path):
    cfg = compose_config("train", overrides_for(choice, key, value))
    with pytest.raises(UsageError) as refused:
        run_train(cfg, tmp_path / "run")
    message = str(refused.value)
    assert key in message and "\n" not in message
    assert not (tmp_path / "run").exists()
