"""Image datasets by name, class-stratified subsets, and batch iteration on the device.

Every split is held as a uint8 tensor (N, C, H, W) and converted to float in [0, 1] one batch
at a time; augmentation (random crop with 4-pixel zero padding, horizontal flip) is applied
to whole batches. Subsets (``data.val_size``, ``data.limit_train``, ``data.limit_test`` and
``attack.n_examples``) are class-stratified and drawn with ``data.subset_seed``, not the
training seed, so every command sees the same images.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dsnn_cli.errors import DsnnError, UsageError
from dsnn_cli.registry import Registry

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")


@dataclass
class Split:
    """Inputs and targets: uint8 images (N, C, H, W) with class labels (N,), or float vectors."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, indices: torch.Tensor) -> Split:
        return Split(self.inputs[indices], self.targets[indices])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.inputs.to(device), self.targets.to(device))


@dataclass
class LazySplit:
    """Labels known up front; images fetched (decoded) only for the indices asked for."""

    labels: torch.Tensor
    fetch: Callable[[torch.Tensor], torch.Tensor]

    def take(self, indices: torch.Tensor) -> Split:
        return Split(self.fetch(indices), self.labels[indices])


@dataclass
class Source:
    """What a dataset loader returns: lazy train and test splits and class names."""

    train: LazySplit | None
    test: LazySplit
    classes: list[str]


@dataclass
class ImageData:
    """Train / validation / test splits plus what a model needs to know about them."""

    train: Split | None
    val: Split | None
    test: Split
    classes: list[str]
    mean: list[float]
    std: list[float]

    def info(self) -> dict[str, Any]:
        """The data facts a checkpoint stores to rebuild its model."""
        images = self.test.inputs
        return {
            "kind": "image",
            "task": "classification",
            "in_channels": int(images.shape[1]),
            "image_size": [int(images.shape[2]), int(images.shape[3])],
            "num_classes": len(self.classes),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass
class VectorSource:
    """Regression pairs (float64) and the facts a model and the structure metrics need."""

    train: Split
    test: Split
    info: dict[str, Any]


@dataclass
class VectorData:
    """Train / validation / test pairs of a regression task (flow maps, functions)."""

    train: Split | None
    val: Split | None
    test: Split
    facts: dict[str, Any]

    def info(self) -> dict[str, Any]:
        return {
            "kind": "vector",
            "task": "regression",
            "dim_in": int(self.test.inputs.shape[1]),
            "dim_out": int(self.test.targets.shape[1]),
            **self.facts,
        }


DATASETS: Registry[Callable[[Mapping[str, Any], bool], Source | VectorSource]] = Registry("data")


# ------------------------------------------------------------------------------ subsets


def stratified_subset(labels: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of n points, classes as balanced as possible, nested in n.

    Each class is shuffled with `seed`; points are then taken round-robin over the classes
    (in a shuffled class order), so subset(n) is contained in subset(n + 1).
    """
    total = int(labels.shape[0])
    if n is None or n >= total:
        return torch.arange(total)
    if n < 0:
        raise UsageError(f"subset size {n} must be >= 0")
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(total, generator=generator)
    shuffled = labels[order]
    classes = torch.unique(labels)
    class_rank = torch.empty(int(classes.max()) + 1, dtype=torch.long)
    class_rank[classes[torch.randperm(len(classes), generator=generator)]] = torch.arange(len(classes))
    # position of each shuffled point within its class
    within = torch.zeros(total, dtype=torch.long)
    for c in classes:
        members = (shuffled == c).nonzero().squeeze(1)
        within[members] = torch.arange(len(members))
    key = within * len(classes) + class_rank[shuffled]
    chosen = order[torch.argsort(key)[:n]]
    return torch.sort(chosen).values


def complement(total: int, indices: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(total, dtype=torch.bool)
    keep[indices] = False
    return keep.nonzero().squeeze(1)


# ------------------------------------------------------------------------------ loading


def load_data(cfg: Mapping[str, Any], with_train: bool = True) -> ImageData | VectorData:
    """Load the splits a command needs, with the configured subsets.

    Args:
        cfg: the ``data`` config node.
        with_train: False loads (and decodes) only the test split, as `dsnn attack` does.
    """
    source = DATASETS[cfg["name"]](cfg, with_train)
    if isinstance(source, VectorSource):
        return vector_data(source, cfg)
    seed = int(cfg.get("subset_seed", 0))
    test = source.test.take(stratified_subset(source.test.labels, cfg.get("limit_test"), seed))
    train = val = None
    if with_train:
        assert source.train is not None
        labels = source.train.labels
        val_size = int(cfg.get("val_size") or 0)
        if val_size >= len(labels):
            raise UsageError(
                f"data.val_size={val_size} leaves no training images (the training set has "
                f"{len(labels)}); lower data.val_size"
            )
        val_idx = stratified_subset(labels, val_size, seed) if val_size else torch.empty(0, dtype=torch.long)
        rest = complement(len(labels), val_idx)
        train_idx = rest[stratified_subset(labels[rest], cfg.get("limit_train"), seed + 1)]
        train = source.train.take(train_idx)
        val = source.train.take(val_idx) if val_size else None
    mean, std = channel_statistics(cfg, train if train is not None else test)
    return ImageData(train, val, test, source.classes, mean, std)


def vector_data(source: VectorSource, cfg: Mapping[str, Any]) -> VectorData:
    """Random (nested, seeded) validation and limit subsets of regression pairs, as float32."""
    seed = int(cfg.get("subset_seed", 0))
    unlabeled = torch.zeros(len(source.train), dtype=torch.long)
    val_size = int(cfg.get("val_size") or 0)
    if val_size >= len(source.train):
        raise UsageError(f"data.val_size={val_size} leaves no training pairs (there are {len(source.train)})")
    val_idx = stratified_subset(unlabeled, val_size, seed) if val_size else torch.empty(0, dtype=torch.long)
    rest = complement(len(source.train), val_idx)
    train_idx = rest[stratified_subset(unlabeled[rest], cfg.get("limit_train"), seed + 1)]
    test_idx = stratified_subset(torch.zeros(len(source.test), dtype=torch.long), cfg.get("limit_test"), seed)

    def as_float(split: Split) -> Split:
        return Split(split.inputs.float(), split.targets.float())

    return VectorData(
        as_float(source.train.subset(train_idx)),
        as_float(source.train.subset(val_idx)) if val_size else None,
        as_float(source.test.subset(test_idx)),
        source.info,
    )


def channel_statistics(cfg: Mapping[str, Any], split: Split) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0,1] units: from the config, or measured on the split."""
    if cfg.get("mean") is not None and cfg.get("std") is not None:
        return [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]
    pixels = split.inputs.double().div(255.0).transpose(0, 1).flatten(1)
    return pixels.mean(dim=1).tolist(), pixels.std(dim=1).clamp_min(1e-3).tolist()


def resolve_root(cfg: Mapping[str, Any]) -> Path:
    root = cfg.get("root")
    if not root:
        raise UsageError(f"data={cfg['name']} needs data.root=PATH")
    return Path(os.path.expanduser(str(root))).resolve()


@DATASETS.register("synthetic")
def synthetic(cfg: Mapping[str, Any], with_train: bool) -> Source:
    """Class prototypes (smooth random patterns) plus pixel noise: learnable in seconds."""
    classes = int(cfg.get("num_classes", 10))
    size = int(cfg.get("image_size", 32))
    channels = int(cfg.get("channels", 3))
    generator = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    coarse = torch.rand(classes, channels, 4, 4, generator=generator)
    prototypes = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    prototypes = 0.2 + 0.6 * prototypes

    def draw(n: int) -> LazySplit:
        labels = torch.arange(n) % classes
        noise = float(cfg.get("noise", 0.15)) * torch.randn(n, channels, size, size, generator=generator)
        images = (prototypes[labels] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
        return LazySplit(labels, lambda idx: images[idx])

    train = draw(int(cfg.get("n_train", 1000)))
    test = draw(int(cfg.get("n_test", 500)))
    return Source(train if with_train else None, test, [f"class{c}" for c in range(classes)])


@DATASETS.register("imagefolder")
def imagefolder(cfg: Mapping[str, Any], with_train: bool) -> Source:
    """root/train/<class>/*.jpg and root/test/<class>/*.jpg, as torchvision's ImageFolder."""
    root = resolve_root(cfg)
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise UsageError(
                f"data.root={root} has no {part}/ folder; an ImageFolder copy needs "
                "root/train/<class>/*.jpg and root/test/<class>/*.jpg"
            )
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise UsageError(f"data.root={root}/train holds no class folders")
    train = folder_split(root / "train", classes) if with_train else None
    return Source(train, folder_split(root / "test", classes), classes)


def folder_split(folder: Path, classes: list[str]) -> LazySplit:
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        directory = folder / name
        if not directory.is_dir():
            raise UsageError(f"{folder} has no folder for class '{name}'")
        files = sorted(e.path for e in os.scandir(directory) if e.name.lower().endswith(IMAGE_EXTENSIONS))
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise UsageError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return LazySplit(torch.tensor(labels), lambda idx: decode_images([paths[i] for i in idx.tolist()]))


def decode_images(paths: list[str]) -> torch.Tensor:
    """Decode image files to one uint8 (N, 3, H, W) tensor (JPEGs in batches: ~10x faster)."""
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    if not paths:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    images: list[torch.Tensor] = []
    chunk = 4096
    for start in range(0, len(paths), chunk):
        group = paths[start : start + chunk]
        raw = [torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8) for p in group]
        if all(p.lower().endswith((".jpg", ".jpeg")) for p in group):
            images += decode_jpeg(raw, mode=ImageReadMode.RGB)
        else:
            images += [decode_image(r, mode=ImageReadMode.RGB) for r in raw]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise DsnnError(f"images differ in size ({sorted(shapes)[:3]}...); resize them to one size")
    return torch.stack(images)


def torchvision_cifar(cls_name: str, pretty: str) -> Callable[[Mapping[str, Any], bool], Source]:
    def load(cfg: Mapping[str, Any], with_train: bool) -> Source:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        root = resolve_root(cfg)
        splits = {}
        for part in ("train", "test") if with_train else ("test",):
            dataset = open_or_download(cls, root, part == "train", cfg, pretty)
            images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
            labels = torch.tensor(dataset.targets)
            splits[part] = LazySplit(labels, lambda idx, images=images: images[idx])
        return Source(splits.get("train"), splits["test"], list(dataset.classes))

    return load


def open_or_download(cls, root: Path, train: bool, cfg: Mapping[str, Any], pretty: str):
    try:
        return cls(root=str(root), train=train, download=False)
    except RuntimeError:
        pass
    if not cfg.get("download", True):
        raise UsageError(
            f"{pretty} not found in data.root={root}; set data.download=true, or point at a "
            "local copy with data=imagefolder data.root=PATH"
        )
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(float(cfg.get("download_timeout", 60)))
    try:
        return cls(root=str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - urllib, socket and checksum errors alike
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DsnnError(
            f"could not download {pretty} to {root} ({reason}); point at a local copy with "
            "data=imagefolder data.root=PATH (an ImageFolder with train/ and test/)"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)


def flow_map_data(system_name: str) -> Callable[[Mapping[str, Any], bool], VectorSource]:
    """Pairs (y0, Phi^dt(y0)) of an ODE's exact flow (RK4 with tiny steps, float64)."""

    def load(cfg: Mapping[str, Any], with_train: bool) -> VectorSource:
        from dsnn_cli.odes import SYSTEMS, flow_map

        system = SYSTEMS[system_name]
        dt = float(cfg.get("dt", 0.1))
        generator = torch.Generator().manual_seed(int(cfg.get("seed", 0)))

        def pairs(n: int) -> Split:
            y0 = system.sample(n, generator)
            return Split(y0, flow_map(system, y0, dt))

        train, test = pairs(int(cfg.get("n_train", 2000))), pairs(int(cfg.get("n_test", 500)))
        info = {"system": system_name, "dt": dt, "rollout_steps": int(cfg.get("rollout_steps", 0))}
        return VectorSource(train, test, info)

    return load


@DATASETS.register("function")
def function_regression(cfg: Mapping[str, Any], with_train: bool) -> VectorSource:
    """x uniform on [lo, hi], y = |x| + sin x + x^2: a non-smooth scalar regression."""
    from dsnn_cli.odes import function_target

    lo, hi = (float(v) for v in cfg.get("interval", [-2.0, 2.0]))
    generator = torch.Generator().manual_seed(int(cfg.get("seed", 0)))

    def pairs(n: int) -> Split:
        x = lo + (hi - lo) * torch.rand(n, 1, generator=generator, dtype=torch.float64)
        return Split(x, function_target(x))

    train, test = pairs(int(cfg.get("n_train", 2000))), pairs(int(cfg.get("n_test", 500)))
    return VectorSource(train, test, {"system": None, "dt": None, "rollout_steps": 0})


for _system in ("sir", "skew", "abc", "cubic"):
    DATASETS.add(_system, flow_map_data(_system))
DATASETS.add("cifar10", torchvision_cifar("CIFAR10", "CIFAR-10"))
DATASETS.add("cifar100", torchvision_cifar("CIFAR100", "CIFAR-100"))


# ------------------------------------------------------------------------------ batches


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool = False,
    generator: torch.Generator | None = None,
    limit: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float inputs, targets) on the split's device; uint8 images become [0, 1] floats.

    The shuffling and augmentation draws come from `generator` (on the CPU), so a run
    resumed from a checkpoint that saved the generator repeats them exactly.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    count = 0
    for start in range(0, n, batch_size):
        if limit is not None and count >= limit:
            return
        idx = order[start : start + batch_size].to(split.inputs.device)
        inputs = split.inputs[idx]
        if inputs.dtype == torch.uint8:  # images: augment as uint8, then scale to [0, 1]
            if augment:
                inputs = augment_batch(inputs, generator)
            inputs = inputs.float().div_(255.0)
        yield inputs, split.targets[idx]
        count += 1


def augment_batch(images: torch.Tensor, generator: torch.Generator | None, pad: int = 4) -> torch.Tensor:
    """Random crop from a zero-padded image and random horizontal flip, per image."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)
    cols = dx[:, None] + torch.arange(w, device=images.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()
