"""Config nodes as plain Python data: what checkpoints, records and comparisons hold."""

from __future__ import annotations

from typing import Any


def to_plain(node: Any, resolve: bool = True) -> Any:
    """OmegaConf nodes to plain dicts and lists (interpolations resolved); anything else as it is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=resolve)
    return node
