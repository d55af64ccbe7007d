"""Subsets, loaders and batch augmentation."""

from __future__ import annotations

import pytest
import torch
from helpers import data_config
from torchvision.io import encode_jpeg, encode_png, write_file

from dsnn_cli.data.images import augment_batch
from dsnn_cli.data.loading import batches, load_data
from dsnn_cli.data.subsets import stratified_subset
from dsnn_cli.errors import UsageError


def test_stratified_subset_is_balanced_nested_and_seeded():
    labels = torch.arange(1000) % 10
    labels = labels[torch.randperm(1000, generator=torch.Generator().manual_seed(1))]
    small, large = stratified_subset(labels, 95, 0), stratified_subset(labels, 300, 0)
    counts = torch.bincount(labels[small], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 95
    assert set(small.tolist()) <= set(large.tolist())
    assert torch.equal(small, stratified_subset(labels, 95, 0))
    assert not torch.equal(small, stratified_subset(labels, 95, 1))
    torch.manual_seed(123)  # the global seed does not matter
    assert torch.equal(small, stratified_subset(labels, 95, 0))
    assert torch.equal(stratified_subset(labels, None, 0), torch.arange(1000))


def test_val_train_test_are_disjoint_and_sized():
    cfg = data_config(
        "synthetic", n_train=300, n_test=100, image_size=8, val_size=50, limit_train=120, limit_test=40
    )
    data = load_data(cfg)
    assert (len(data.train), len(data.val), len(data.test)) == (120, 50, 40)
    assert torch.bincount(data.val.targets).tolist() == [5] * 10
    info = data.info()
    assert info["image_size"] == [8, 8] and info["num_classes"] == 10 and len(info["mean"]) == 3
    with pytest.raises(UsageError, match="val_size"):
        load_data({**cfg, "val_size": 300})


def test_augmentation_is_a_crop_or_flip_of_the_padded_image():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = augment_batch(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(16):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


@pytest.mark.parametrize("mode", ["flip", "crop", "none"])
def test_each_augmentation_mode_draws_only_its_transforms(mode):
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    out = augment_batch(images, torch.Generator().manual_seed(0), mode=mode)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(32):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(9) for dx in range(9)]
        unflipped = any(torch.equal(out[i], w) for w in windows)
        flipped = torch.equal(out[i], images[i].flip(2))
        assert {"flip": unflipped or flipped, "crop": unflipped, "none": torch.equal(out[i], images[i])}[mode]
    moved = sum(not torch.equal(out[i], images[i]) for i in range(32))
    assert (moved == 0) == (mode == "none")  # flip and crop move some of 32 images (1 - 2^-32)


def test_batches_cover_the_split_once_in_float():
    cfg = data_config("synthetic", n_train=64, n_test=10, image_size=8, val_size=0)
    split = load_data(cfg).train
    seen = [y for _, y in batches(split, 10, shuffle=True, generator=torch.Generator().manual_seed(0))]
    x, _ = next(batches(split, 10))
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert sorted(torch.cat(seen).tolist()) == sorted(split.targets.tolist())
    assert len(list(batches(split, 10, limit=2))) == 2


def test_imagefolder_reads_jpeg_and_png(tmp_path):
    for part in ("train", "test"):
        for c, name in enumerate(["cat", "dog"]):
            folder = tmp_path / part / name
            folder.mkdir(parents=True)
            for i in range(6):
                image = torch.full((3, 8, 8), 40 * c + i, dtype=torch.uint8)
                if i % 2:
                    write_file(str(folder / f"{i}.jpg"), encode_jpeg(image, quality=100))
                else:
                    write_file(str(folder / f"{i}.png"), encode_png(image))
    data = load_data(data_config("imagefolder", root=str(tmp_path), val_size=2, limit_test=4))
    assert data.classes == ["cat", "dog"]
    assert (len(data.train), len(data.val), len(data.test)) == (10, 2, 4)
    assert data.test.inputs.shape[1:] == (3, 8, 8)


def test_missing_data_root_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no train/ folder"):
        load_data(data_config("imagefolder", root=str(tmp_path / "missing")))
    with pytest.raises(UsageError, match="unknown data 'mnist'"):
        load_data({**data_config("synthetic"), "name": "mnist"})


def make_folder(root, names, per_class=4):
    for part in ("train", "test"):
        for c, name in enumerate(names):
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = torch.full((3, 8, 8), 40 * c + i, dtype=torch.uint8)
                write_file(str(folder / f"{i}.jpg"), encode_jpeg(image, quality=100))


def test_a_broken_image_is_named_and_an_empty_class_refused(tmp_path):
    from dsnn_cli.errors import DsnnError

    make_folder(tmp_path / "a", ["cat", "dog"])
    broken = tmp_path / "a" / "test" / "dog" / "2.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DsnnError, match=r"cannot decode the image .*dog/2\.jpg"):
        load_data(data_config("imagefolder", root=str(tmp_path / "a"), val_size=2))
    make_folder(tmp_path / "b", ["cat", "dog"])
    (tmp_path / "b" / "train" / "bird").mkdir()
    with pytest.raises(UsageError, match=r"class 'bird'\) holds no images"):
        load_data(data_config("imagefolder", root=str(tmp_path / "b"), val_size=2))
