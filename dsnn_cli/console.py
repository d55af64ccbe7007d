"""Terminal output: progress bars, the one table printer, and how numbers and radii read."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress_bar(enabled: bool | None = None) -> Progress:
    """A progress display; disabled when stderr is not a terminal unless forced on."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not enabled,
        transient=False,
    )


def print_table(
    title: str,
    header: list[str],
    rows: list[list[str]],
    caption: str | None = None,
    left: set[str] | frozenset[str] = frozenset(),
    show_header: bool = True,
) -> None:
    """The one table printer of every command: cells are strings already, numbers right-aligned.
    The caption is printed under the table at full width (a narrow table would fold it)."""
    from rich.table import Table

    table = Table(title=title, show_header=show_header)
    for column in header:
        table.add_column(column, justify="left" if column in left else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    out = Console()
    if not out.is_terminal:
        out.width = max(out.width, 200)
    out.print(table)
    if caption:
        out.print(caption, style="italic", highlight=False)


def percent(value: float | None) -> str:
    """An accuracy in [0, 1] as a percentage with two decimals; '-' when missing."""
    return "-" if value is None else f"{100 * value:.2f}%"


def eps_label(eps: float) -> str:
    """A radius as people write it: 36/255 for multiples of 1/255, else the shortest decimal."""
    decimal = f"{eps:.6g}"
    k = round(eps * 255)
    if k and abs(eps * 255 - k) < 1e-3 and len(decimal) > 5:
        return f"{k}/255"
    return decimal
