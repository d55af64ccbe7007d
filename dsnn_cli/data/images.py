"""Image datasets by name (synthetic, ImageFolder copies, torchvision's CIFAR) and batch augmentation."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from dsnn_cli.data.containers import DATASETS, LazySplit, Source
from dsnn_cli.devices import to_device
from dsnn_cli.errors import DsnnError, UsageError, one_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")


def resolve_root(cfg: Mapping[str, Any]) -> Path:
    root = cfg["root"]
    if not root:
        raise UsageError(f"data={cfg['name']} needs data.root=PATH")
    return Path(os.path.expanduser(str(root))).resolve()


@DATASETS.register("synthetic")
def synthetic(cfg: Mapping[str, Any], with_train: bool) -> Source:
    """Class prototypes (smooth random patterns) plus pixel noise: learnable in seconds."""
    classes = int(cfg["num_classes"])
    size = int(cfg["image_size"])
    channels = int(cfg["channels"])
    generator = torch.Generator().manual_seed(int(cfg["seed"]))
    coarse = torch.rand(classes, channels, 4, 4, generator=generator)
    prototypes = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    prototypes = 0.2 + 0.6 * prototypes

    def draw(n: int) -> LazySplit:
        labels = torch.arange(n) % classes
        noise = float(cfg["noise"]) * torch.randn(n, channels, size, size, generator=generator)
        images = (prototypes[labels] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
        return LazySplit(labels, lambda idx: images[idx])

    train = draw(int(cfg["n_train"]))
    test = draw(int(cfg["n_test"]))
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
        if not files:
            raise UsageError(
                f"{directory} (class '{name}') holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
                "add its images or remove the folder"
            )
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise UsageError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return LazySplit(torch.tensor(labels), lambda idx: decode_images([paths[i] for i in idx.tolist()]))


def decode_one_by_one(paths: list[str], raw: list[torch.Tensor], decode, mode) -> list[torch.Tensor]:
    """After a batch failed: decode each file alone, so the error names the one that is broken."""
    images = []
    for path, data in zip(paths, raw, strict=True):
        try:
            images.append(decode(data, mode=mode))
        except RuntimeError as exc:
            reason = one_line(str(exc))
            raise DsnnError(f"cannot decode the image {path} ({reason}): replace or remove it") from None
    return images


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
        try:
            if all(p.lower().endswith((".jpg", ".jpeg")) for p in group):
                images += decode_jpeg(raw, mode=ImageReadMode.RGB)
            else:
                images += [decode_image(r, mode=ImageReadMode.RGB) for r in raw]
        except RuntimeError:
            images += decode_one_by_one(group, raw, decode_image, ImageReadMode.RGB)
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
    if not cfg["download"]:
        raise UsageError(
            f"{pretty} not found in data.root={root}; set data.download=true, or point at a "
            "local copy with data=imagefolder data.root=PATH"
        )
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(float(cfg["download_timeout"]))
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


DATASETS.add("cifar10", torchvision_cifar("CIFAR10", "CIFAR-10"))
DATASETS.add("cifar100", torchvision_cifar("CIFAR100", "CIFAR-100"))


# data.augment: which random transforms a training batch gets (true = crop_flip, false = none).
AUGMENTATIONS = ("crop_flip", "crop", "flip", "none")


def augment_batch(
    images: torch.Tensor, generator: torch.Generator | None, pad: int = 4, mode: str = "crop_flip"
) -> torch.Tensor:
    """Random crop from a zero-padded image and/or random horizontal flip, per image (`mode`:
    one of AUGMENTATIONS).

    The draws come from `generator` on the CPU (what a checkpoint saves) and reach the images'
    device as one non-blocking copy; a mode draws only what it uses.
    """
    if mode not in AUGMENTATIONS:
        raise ValueError(f"augmentation {mode!r} is not one of {', '.join(AUGMENTATIONS)}")
    crop, flip_images = mode in ("crop_flip", "crop"), mode in ("crop_flip", "flip")
    if not (crop or flip_images):
        return images
    n, _, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)) if crop else images
    zero = torch.zeros(n, dtype=torch.long)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator) if crop else zero
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator) if crop else zero
    flip = torch.rand(n, generator=generator) < 0.5 if flip_images else zero.bool()
    dy, dx, flip = to_device(torch.stack([dy, dx, flip.long()]), device)
    rows = dy[:, None] + torch.arange(h, device=device)
    cols = dx[:, None] + torch.arange(w, device=device)
    cols = torch.where(flip[:, None].bool(), cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()
