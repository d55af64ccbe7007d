"""Resuming a run from its directory alone: the run's own config, and which changes it allows.

A resume must continue the run that was started, whatever defaults the command line composes
today: a changed learning rate, seed or data set would leave a record that no single
configuration produced, so such changes are refused by name. Where, how fast and how long it
trains, and what it reports, may change (RESUMABLE).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dsnn_cli.config import convert, to_plain
from dsnn_cli.errors import UsageError
from dsnn_cli.rundir import CONFIG, RunDir
from dsnn_cli.training.checkpoint import LAST, load_checkpoint

log = logging.getLogger("dsnn.train")

# What a resumed run may change: where and how fast it computes, how long it trains, what it
# reports. Everything else would make the record describe a run that never happened.
RESUMABLE = (
    "trainer.max_epochs",
    "trainer.device",
    "trainer.threads",
    "trainer.keep_memory",
    "trainer.progress",
    "trainer.eval_batch_size",
    "trainer.channels_last",
    "trainer.compile",
    "trainer.deterministic",
    "certify.eps",
    "data.root",
    "data.download",
    "data.download_timeout",
)


def resumed_config(run: RunDir, cfg: DictConfig, overrides: list[str] | None) -> DictConfig:
    """The run's own config.yaml with the RESUMABLE changes among `overrides` (the command
    line's; None: every key of `cfg`, the sweep's case) applied; other changes are refused."""
    stored = OmegaConf.load(run.path / CONFIG)
    keys = sorted(flat_settings(cfg)) if overrides is None else override_keys(overrides)
    refused = [f"{item} (not among the run's overrides)" for item in new_presets(run, overrides or [])]
    changed = {}
    for key in keys:
        old, new = OmegaConf.select(stored, key, default=None), OmegaConf.select(cfg, key, default=None)
        old_leaves, new_leaves = flat_settings(old, key), flat_settings(new, key)
        for leaf in sorted(set(old_leaves) | set(new_leaves)):
            if leaf != "trainer.resume" and old_leaves.get(leaf) != new_leaves.get(leaf):
                changed[leaf] = (old_leaves.get(leaf), new_leaves.get(leaf))
    refused += [f"{key} ({old!r} -> {new!r})" for key, (old, new) in changed.items() if key not in RESUMABLE]
    if refused:
        raise UsageError(
            f"trainer.resume: {', '.join(refused)} would change the result of the run in {run.path}; "
            f"a resume continues with the run's own config (only {', '.join(RESUMABLE)} may change): "
            "drop those overrides, or start a new run"
        )
    if "trainer.max_epochs" in changed:
        refuse_fewer_epochs(run, changed["trainer.max_epochs"][1])
    for key, (_, new) in changed.items():
        OmegaConf.update(stored, key, new, force_add=True)
    OmegaConf.update(stored, "trainer.resume", True, force_add=True)
    if changed:
        log.info("trainer.resume: continuing with the run's config, changed: %s", ", ".join(changed))
    return stored


def refuse_fewer_epochs(run: RunDir, max_epochs: Any) -> None:
    """A resume may extend a run, not end it before the epochs last.pt already holds (read
    from last.pt, not the summary: a kill between the two writes leaves the summary behind)."""
    done = int(load_checkpoint(run.checkpoints / LAST)["training"]["state"]["epoch"])
    epochs = convert(max_epochs, int)
    if epochs is None or epochs < done:
        raise UsageError(
            f"trainer.resume: trainer.max_epochs={max_epochs} is below the {done} epochs already trained"
        )


def flat_settings(node: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf settings of a config (dotted keys -> plain values); the hydra node is not a setting."""
    plain = to_plain(node) if isinstance(node, DictConfig) else node
    if not isinstance(plain, dict):
        return {prefix: plain} if prefix else {}
    flat = {}
    for key, value in plain.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if dotted != "hydra":
            flat.update(flat_settings(value, dotted) if isinstance(value, dict) else {dotted: value})
    return flat


def new_presets(run: RunDir, overrides: list[str]) -> list[str]:
    """Overrides of groups merged at the top level (experiment=, debug=), which have no node of
    their own to compare, that the run's first invocation (.hydra/overrides.yaml) did not have."""
    recorded = run.path / ".hydra" / "overrides.yaml"
    original = set(OmegaConf.load(recorded)) if recorded.is_file() else set()
    return [item for item in overrides if item.partition("=")[0] in GLOBAL_GROUPS and item not in original]


# Config groups whose options set keys across the config (`# @package _global_`).
GLOBAL_GROUPS = ("experiment", "debug")


def override_keys(overrides: list[str]) -> list[str]:
    """The config keys that command-line overrides set (group=option names the group's node)."""
    keys = []
    for item in overrides:
        key = item.partition("=")[0].lstrip("+~")
        if key and key.split(".")[0] not in ("hydra", *GLOBAL_GROUPS) and key != "trainer.resume":
            keys.append(key.split("@")[0])
    return keys
