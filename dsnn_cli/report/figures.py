"""The figures of `dsnn report`: accuracy against eps, and what an adversarial example looks like.

matplotlib is imported inside the functions so that `dsnn --help` and the commands without
plots never pay for it. Figures are drawn on the non-interactive Agg canvas (no display is
needed, no pyplot state is kept) at fixed sizes and dpi, so the pixel dimensions are known:
``report.png`` is ACCURACY_SIZE_PX, ``adversarial.png`` is adversarial_size_px(rows).
Files are written atomically from an in-memory PNG.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsnn_cli.rundir import atomic_write_bytes

DPI = 100
ACCURACY_SIZE_IN = (10.0, 5.5)
ACCURACY_SIZE_PX = (1000, 550)
# adversarial.png: one row per example, three panels of PANEL_IN inches, a title band on top.
PANEL_IN = 2.0
TITLE_BAND_IN = 0.5
ATTACK_MARKERS = {"autoattack": "^", "apgd": "s", "pgd": "o", "paper": "x"}


@dataclass
class Curve:
    """One line of report.png: accuracy against eps."""

    label: str
    family: str
    kind: str  # "robust" or "certified"
    attack: str
    points: list[tuple[float, float]]


@dataclass
class ExampleSet:
    """Adversarial examples of one run, attack and eps, as numpy arrays."""

    run: str
    attack: str
    eps: str
    classes: list[str]
    images: Any  # (k, C, H, W) in [0, 1]
    adversarial: Any
    labels: Any  # (k,)
    predicted: Any


def adversarial_size_px(rows: int) -> tuple[int, int]:
    """(width, height) of adversarial.png with `rows` examples."""
    return round(3 * PANEL_IN * DPI), round((rows * PANEL_IN + TITLE_BAND_IN) * DPI)


def new_figure(size_in: tuple[float, float]) -> Any:
    """A Figure on the Agg canvas, detached from pyplot (nothing to close, no GUI backend)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # any later pyplot import in this process stays non-interactive
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size_in, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Any, path: Path) -> None:
    """Render into memory, then replace `path` atomically (no bbox trimming: the size stays fixed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(Path(path), buffer.getvalue())


def family_colours(families: list[str]) -> dict[str, Any]:
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    return {family: palette(i % 10) for i, family in enumerate(sorted(set(families)))}


def plot_accuracy_curves(curves: list[Curve], path: Path, title: str = "") -> None:
    """Robust accuracy (solid) and certified accuracy (dashed) against eps, coloured by model family."""
    figure = new_figure(ACCURACY_SIZE_IN)
    figure.subplots_adjust(left=0.07, right=0.6, top=0.92, bottom=0.1)
    axes = figure.add_subplot(1, 1, 1)
    colours = family_colours([c.family for c in curves])
    for curve in curves:
        eps, values = zip(*curve.points, strict=True)
        axes.plot(
            eps,
            values,
            linestyle="--" if curve.kind == "certified" else "-",
            marker=None if curve.kind == "certified" else ATTACK_MARKERS.get(curve.attack, "."),
            markersize=4,
            color=colours[curve.family],
            label=f"{shorten(curve.label)} ({curve.family})",
        )
    axes.set_xlabel("eps (l2, [0,1] pixels)")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0.0, 1.0)
    axes.set_xlim(left=0.0)
    axes.grid(True, alpha=0.3)
    heading = "accuracy against eps: robust (solid), certified (dashed)"
    axes.set_title(f"{title}\n{heading}" if title else heading, fontsize=10)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    save_png(figure, path)


def shorten(label: str, width: int = 60) -> str:
    """Long run paths keep their informative end."""
    return label if len(label) <= width else "..." + label[-(width - 3) :]


def plot_adversarial_examples(examples: ExampleSet, path: Path) -> None:
    """Rows of clean image (true class), perturbation (its l2 norm), adversarial image (prediction)."""
    import numpy as np

    rows = len(examples.labels)
    width_px, height_px = adversarial_size_px(rows)
    figure = new_figure((width_px / DPI, height_px / DPI))
    top = 1 - TITLE_BAND_IN / (height_px / DPI)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=top, hspace=0.3, wspace=0.1)
    figure.suptitle(
        f"{shorten(examples.run, 40)}: {examples.attack} at eps={examples.eps}", fontsize=10, y=0.995
    )
    for row in range(rows):
        clean, adversarial = examples.images[row], examples.adversarial[row]
        delta = adversarial - clean
        norm = float(np.sqrt((delta.astype(np.float64) ** 2).sum()))
        panels = [
            (clean, f"true: {class_name(examples.classes, examples.labels[row])}"),
            (delta_for_display(delta), f"||delta|| = {norm:.3f}"),
            (adversarial, f"predicted: {class_name(examples.classes, examples.predicted[row])}"),
        ]
        for column, (image, title) in enumerate(panels):
            axes = figure.add_subplot(rows, 3, 3 * row + column + 1)
            show_image(axes, image)
            axes.set_title(title, fontsize=9)
    save_png(figure, path)


def delta_for_display(delta: Any) -> Any:
    """0.5 + delta / (2 max|delta|): mid-grey where nothing changed, in [0, 1]."""
    import numpy as np

    largest = float(np.abs(delta).max()) if delta.size else 0.0
    if largest == 0.0:
        return np.full_like(delta, 0.5)
    return 0.5 + delta / (2 * largest)


def class_name(classes: list[str], index: Any) -> str:
    index = int(index)
    return classes[index] if 0 <= index < len(classes) else str(index)


def show_image(axes: Any, image: Any) -> None:
    """A (C, H, W) array in [0, 1]: grey for one channel, RGB for three."""
    import numpy as np

    image = np.clip(image, 0.0, 1.0)
    if image.shape[0] == 1:
        axes.imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        axes.imshow(np.transpose(image[:3], (1, 2, 0)), interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
