"""Config nodes as plain Python data: what checkpoints, records and comparisons hold."""

from __future__ import annotations

from typing import Any


def to_plain(node: Any, resolve: bool = True) -> Any:
    """OmegaConf nodes to plain dicts and lists (interpolations resolved); anything else as it is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=resolve)
    return node


KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def setting(
    node: Any,
    key: str,
    kind: type,
    prefix: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: tuple[Any, ...] | None = None,
    nullable: bool = False,
) -> Any:
    """`node[key]` converted to `kind` and checked against its range, or one UsageError line that
    names the key, the value given and what is valid (exit status 2).

    Why one helper: every command validates its config once, at its boundary, and every bad
    value reads the same way whatever group it comes from.
    """
    from dsnn_cli.errors import UsageError

    name = f"{prefix}.{key}" if prefix else key
    if key not in node:
        raise UsageError(f"missing config key {name}: set it with +{name}=...")
    value = node[key]
    if value is None:
        if nullable:
            return None
        raise UsageError(
            f"{name}=null is not allowed: it must be {describe_range(kind, low, high, low_open, choices)}"
        )
    converted = convert(value, kind)
    if converted is None or not within(converted, low, high, low_open, choices):
        valid = describe_range(kind, low, high, low_open, choices) + (" or null" if nullable else "")
        raise UsageError(f"{name}={value!r} is not valid: it must be {valid}")
    return converted


def convert(value: Any, kind: type) -> Any:
    """`value` as `kind` when it is one (bools are not numbers, 2.5 is not an integer), else None."""
    import math

    if kind is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return None
    if kind is float:
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        return None
    return value if isinstance(value, kind) else None


def within(value: Any, low, high, low_open: bool, choices) -> bool:
    if choices is not None:
        return value in choices
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or value <= high


def describe_range(kind: type, low, high, low_open: bool, choices) -> str:
    if choices is not None:
        return "one of " + ", ".join(str(c) for c in choices)
    words = KIND_WORDS.get(kind, kind.__name__)
    if low is not None and high is not None:
        return f"{words} in {'(' if low_open else '['}{low:g}, {high:g}]"
    if low is not None:
        return f"{words} {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{words} <= {high:g}"
    return words


def check(name: str, value: Any, kind: type, **rules: Any) -> Any:
    """`setting` for a value already taken out of its node: `check("loss.margin", m, float, low=0)`."""
    return setting({name: value}, name, kind, "", **rules)
