"""Denoisers by name: the one entry point that turns the notebooks' ``model`` parameter into a denoiser.

``load_denoiser(model, data)`` resolves ``"analytic"`` (the exact denoiser of an analytic dataset), a local
folder (a model this package trained, :mod:`crs.networks`, or a diffusers pipeline or UNet,
:mod:`crs.adapters`) or a Hugging Face hub id of either. The noise range to use with a model is
:func:`crs.schedules.fit_model_range`. The classes themselves live in :mod:`crs.networks` and :mod:`crs.adapters`;
their names are re-exported here, lazily, so that this module imports without diffusers (``pip install crs``
without extras).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from crs.args import resolve_device
from crs.protocols import AnalyticDataset

DENOISER_FILE = "crs_denoiser.json"  # beside a network this package trained: its preconditioning (crs.networks)

_LAZY = {
    "DiffusersDenoiser": "crs.adapters",
    "LatentData": "crs.adapters",
    "model_space": "crs.adapters",
    "pixel_features": "crs.adapters",
    "EDMDenoiser": "crs.networks",
    "MLPNet": "crs.networks",
    "build_denoiser": "crs.networks",
    "unet": "crs.networks",
}
__all__ = sorted(
    [
        "DENOISER_FILE",
        "check_model_data",
        "describe_model",
        "give_prompts",
        "load_denoiser",
        "locate_model",
        "resolve_device",
        "sample_side",
        *_LAZY,
    ]
)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crs.models' has no attribute {name!r}")


def locate_model(model: str, root=".") -> Path:
    """Where a model named by a folder or a hub id is: ``root / model`` or ``model`` if either exists, else
    the hub snapshot (from the local cache, or downloaded when there is a network).

    Raises:
        ValueError: not a folder that exists and not of the form ``org/name``, or an unreachable hub id.
    """
    if not isinstance(model, str) or not model:
        raise ValueError(f"A model must be a folder or a hub id 'org/name', got {model!r}.")
    for candidate in (Path(root) / model, Path(model)):
        if candidate.exists():
            return candidate
    if model.count("/") != 1 or model.startswith((".", "/", "models/")) or Path(model).suffix:  # models/: a run's own
        raise ValueError(f"No model at {model!r}: give model='analytic', a folder that exists, or a hub id 'org/name'.")
    return _resolve_hub(model)


def _resolve_hub(model: str) -> Path:
    """Download (or find in the cache) a hub repository; a clear error when offline or misspelt."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model))
    except Exception as exc:  # offline, unknown repository, no network: all the same to the user
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else f"{type(exc).__name__}: {exc}"
        raise ValueError(
            f"Could not load the hub model {model!r} ({why}). Point `model` at a local folder instead."
        ) from exc


def sample_side(sample_size) -> int:
    """The side of a square model's samples from a diffusers config's ``sample_size`` (an int, or (H, W))."""
    return sample_size if isinstance(sample_size, int) else sample_size[0]


def describe_model(path) -> dict:
    """What the model in a folder is, from its JSON files alone (no weights read, no diffusers import): ``{"network",
    "shape", "pixel_shape", "num_classes", "text", "text_encoder"}`` and, for pipelines, ``"side_multiple"``
    (``num_classes`` None for a model without classes; ``text``: a text-conditional one; ``side_multiple``: a network
    of no fixed size, Flux; see :func:`crs.adapters.describe_pipeline`). The check the batch
    runner's preflight makes before any stage runs; :func:`load_denoiser` then loads exactly what this describes.

    Raises:
        ValueError: a folder that holds no model this package loads (naming what it holds and what is supported).
    """
    import json

    folder = Path(path)
    if (folder / "model_index.json").is_file():
        from crs.adapters import describe_pipeline

        return describe_pipeline(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"No model at {str(folder)!r}: no model_index.json (a pipeline) or config.json (a network).")
    cfg = json.loads((folder / "config.json").read_text())
    if (folder / DENOISER_FILE).is_file():
        shape = tuple(json.loads((folder / DENOISER_FILE).read_text())["shape"])
        classes = (cfg.get("num_class_embeds") or 1) - 1 if "num_class_embeds" in cfg else cfg.get("num_classes", 0)
        network = cfg.get("_class_name", "?")
    elif cfg.get("_class_name") == "UNet2DModel":
        size = sample_side(cfg["sample_size"])
        shape, classes, network = (cfg["in_channels"], size, size), 0, "UNet2DModel"
    else:
        raise ValueError(
            f"The model at {str(folder)!r} is a {cfg.get('_class_name')}; supported bare models: UNet2DModel "
            "(or give a pipeline folder with model_index.json)."
        )
    described = {"network": network, "shape": shape, "pixel_shape": shape, "num_classes": classes or None}
    return {**described, "text": False, "text_encoder": False}


def check_model_data(described: dict, model: str, data_shape) -> None:
    """ValueError naming both shapes unless the described model makes samples of ``data_shape`` (one sample's)."""
    pixels = tuple(described["pixel_shape"])
    multiple = described.get("side_multiple")
    if multiple and data_shape is not None:  # no fixed size (Flux): the data's, if the network can make it
        c, h, w = tuple(data_shape) if len(data_shape) == 3 else (None, None, None)
        if c == pixels[0] and h == w and h % multiple == 0:
            return
        raise ValueError(
            f"The model at {model!r} makes square images of {pixels[0]} channels with a side that is a multiple of "
            f"{multiple}, but the dataset gives {tuple(data_shape)}."
        )
    if data_shape is not None and tuple(data_shape) != pixels:
        what = (
            f"decodes to images of shape {pixels}"
            if pixels != tuple(described["shape"])
            else f"takes samples of shape {pixels}"
        )
        raise ValueError(f"The model at {model!r} {what}, but the dataset gives {tuple(data_shape)}.")


def load_denoiser(model: str, data=None, device: str = "cpu", prompts=None):
    """Return ``D(x, sigma)`` for the notebooks' ``model`` parameter.

    Args:
        model: ``"analytic"`` (the dataset's exact denoiser), a local folder written by
            :meth:`EDMDenoiser.save_pretrained`, a saved diffusers pipeline (a folder with ``model_index.json``:
            a DDPM-style UNet or a class-conditional DiT, a discrete-time scheduler, eps/v/sample prediction,
            optionally a VAE), or a hub id ``"org/name"`` of either.
        data: the dataset the model is used with; its sample shape must match the model's.
        device: where a neural model is put (see :func:`resolve_device`); it takes inputs from
            anywhere and returns outputs on the input's device.
        prompts: a text-conditional pipeline's prompts (:func:`crs.prompts.prompt_table`: a list embedded with its
            own text encoder, or the path of an embeddings file); None leaves it without (give them later with
            ``set_prompts``).

    Raises:
        ValueError: unknown or unreachable model, a shape mismatch (naming both shapes), or prompts for a model that
            takes none.
    """
    if model == "analytic":
        if not isinstance(data, AnalyticDataset):
            raise ValueError(
                f"model='analytic' needs an analytic dataset (gaussian, gmm); {data!r} has no exact denoiser."
            )
        return data.denoiser
    from crs.adapters import DiffusersDenoiser
    from crs.networks import EDMDenoiser

    path = locate_model(model)
    if (Path(path) / "model_index.json").is_file():
        denoiser = DiffusersDenoiser.from_pipeline_folder(path)
    elif (Path(path) / DENOISER_FILE).is_file() or not (Path(path) / "config.json").is_file():
        denoiser = EDMDenoiser.from_pretrained(path)
    else:
        denoiser = DiffusersDenoiser.from_model_folder(path)
    described = {"shape": denoiser.shape, "pixel_shape": denoiser.pixel_shape}
    if getattr(denoiser, "is_packed", False):  # no fixed size (Flux): the data's, else the pipeline's default
        described["side_multiple"] = 2 * denoiser.pixel_shape[1] // denoiser.shape[1]
    check_model_data(described, model, None if data is None else data.shape)
    if data is not None and described.get("side_multiple"):
        denoiser.set_side(data.shape[1] * denoiser.shape[1] // denoiser.pixel_shape[1])
    denoiser = denoiser.eval().to(resolve_device(device))
    if prompts is not None:
        if not getattr(denoiser, "is_text", False):
            raise ValueError(f"`prompts` are for a text-conditional model; {model!r} takes none (give None).")
        give_prompts(denoiser, path, prompts, device)
    return denoiser


def give_prompts(denoiser, folder, prompts, device: str = "cpu"):
    """Give a text-conditional pipeline's denoiser (loaded from ``folder``) the table of ``prompts``
    (:func:`crs.prompts.prompt_table`) and their texts (``prompt_texts``). Returns the denoiser."""
    from crs.prompts import prompt_table

    table = prompt_table(folder, prompts, resolve_device(device))
    denoiser.set_prompts(table.embeds, table.null, table.pooled, table.null_pooled).prompt_texts = table.texts
    return denoiser
