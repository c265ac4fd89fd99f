"""Conditional models and classifier-free guidance, written once for every entry point (docs/method.md, section 10).

A *conditional* denoiser declares ``conditioning`` (a :class:`Conditioning`) and is called as
``denoiser(x, sigma, cond)`` with one condition per sample (class labels: an int64 tensor (B,); the model's
``null`` label asks for its unconditional branch, which label dropout in training taught it). An unconditional
denoiser has ``conditioning = None`` (or no such attribute) and is called as ``denoiser(x, sigma)``.

Classifier-free guidance with scale ``w`` is :class:`Guided`: ``D_w = D_uncond + w (D_cond - D_uncond)``; ``w = 1``
is the plain conditional model (one network call), ``w = 0`` the unconditional one (one call), any other ``w`` two
calls per evaluation. A guided denoiser is itself a conditional denoiser, so everything that takes a conditional
model takes it.

Conditions of generated samples come from a seeded source (:class:`Labels`): sample ``i`` of a run with seed ``seed``
draws its condition from :func:`crs.seeds.condition_seed` of its own sample seed, so a sample keeps its condition
(and its noise) whatever the batch size and the number of samples, and samples stay paired across schedules.

The engine's loops (sampling, rate estimation, the teacher) process batches of samples; :func:`bind` fixes a batch's
conditions to the denoiser, giving the plain ``D(x, sigma)`` every solver step calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from crs.args import check_choice, check_int, check_number
from crs.seeds import condition_seed

__all__ = [
    "Bound",
    "Conditioning",
    "Guided",
    "LABEL_SOURCES",
    "Labels",
    "bind",
    "check_conditions",
    "check_label_source",
    "condition_source",
    "conditioning_of",
    "default_conditions",
    "guidance_evaluations",
    "guidance_of",
    "with_guidance",
]


@dataclass(frozen=True)
class Conditioning:
    """What a conditional denoiser takes.

    Attributes:
        kind: ``"labels"`` (class labels, int64 (B,)) or ``"prompts"`` (a text-conditional model given a table of
            prompt embeddings: the condition is a prompt's index in the table, int64 (B,), so prompts are drawn,
            bound and guided exactly as labels are).
        num_classes: labels (or prompts) ``0 .. num_classes - 1``.
        null: the label of the unconditional branch (``num_classes`` for the models this package trains; the empty
            prompt's embedding for a text model).
    """

    kind: str
    num_classes: int
    null: int

    def __post_init__(self):
        if self.kind not in ("labels", "prompts"):
            raise ValueError(f"Unknown conditioning kind {self.kind!r}; valid: labels, prompts.")
        check_int("num_classes", self.num_classes, 1)
        if 0 <= self.null < self.num_classes:
            raise ValueError(f"The null label {self.null} is one of the classes 0..{self.num_classes - 1}.")

    def null_like(self, n: int, device=None) -> torch.Tensor:
        """``n`` null labels (the unconditional branch)."""
        return torch.full((n,), self.null, dtype=torch.int64, device=device)

    def check(self, cond: torch.Tensor, n: int) -> torch.Tensor:
        """``cond`` as int64 (n,) labels in ``0 .. num_classes - 1`` or ``null`` (ValueError otherwise)."""
        cond = torch.as_tensor(cond)
        if cond.dtype.is_floating_point or cond.shape != (n,):
            raise ValueError(
                f"Class labels must be integers of shape ({n},) (one per sample), got {cond.dtype} {tuple(cond.shape)}."
            )
        cond = cond.to(torch.int64)
        bad = (cond < 0) | ((cond >= self.num_classes) & (cond != self.null))
        if bool(bad.any()):
            raise ValueError(
                f"Class label {int(cond[bad][0])} is outside 0..{self.num_classes - 1} (null: {self.null})."
            )
        return cond

    def labels(self, cond: torch.Tensor | None, n: int, device=None) -> torch.Tensor:
        """The labels a model's forward uses: ``cond`` checked (:meth:`check`), or ``n`` null labels (the
        unconditional branch) when it is None; int64 on ``device``."""
        return self.null_like(n, device) if cond is None else self.check(torch.as_tensor(cond).cpu(), n).to(device)


def conditioning_of(denoiser) -> Conditioning | None:
    """The denoiser's :class:`Conditioning`, or None for an unconditional model (or a plain callable)."""
    return getattr(denoiser, "conditioning", None)


class Labels:
    """Seeded class labels for generated samples: sample seed ``s`` gets one label drawn with a generator seeded
    :func:`crs.seeds.condition_seed` ``(s)``, from ``probs`` over ``0 .. num_classes - 1`` (uniform by default) or
    uniformly from ``choices``; or, ``balanced``, the label ``s mod num_classes``.

    Args:
        num_classes: the model's classes.
        probs: one probability per class (normalised here), e.g. :meth:`from_data` gives the data's label shares.
        choices: the labels to draw from, uniformly (``[3]``: every sample a 3).
        balanced: every class equally often, exactly: any run of consecutive seeds (a sample set, ``seed + i``)
            holds each class ``n // num_classes`` or one more times, as the class-balanced FID protocol of
            conditional ImageNet models draws 50 samples per class. Still a function of the sample's seed alone.
        prompts: for a text-conditional model, a digest of the prompt table its labels index
            (``DiffusersDenoiser.prompt_digest``): recorded in :meth:`state`, so that what was computed for other
            prompts (a stored search) is not taken for these.
    """

    def __init__(
        self,
        num_classes: int,
        probs: Sequence[float] | None = None,
        choices: Sequence[int] | None = None,
        balanced: bool = False,
        prompts: str | None = None,
    ):
        check_int("num_classes", num_classes, 1)
        self.prompts = prompts
        if sum(x is not None for x in (probs, choices)) + bool(balanced) > 1:
            raise ValueError("Give one of `probs`, `choices` and `balanced`, not several.")
        self.balanced = bool(balanced)
        if choices is not None:
            choices = [int(c) for c in choices]
            if not choices or any(not 0 <= c < num_classes for c in choices):
                raise ValueError(f"`choices` must be labels in 0..{num_classes - 1}, got {choices}.")
            probs = np.bincount(choices, minlength=num_classes).astype(np.float64)
        if probs is None:
            probs = np.ones(num_classes)
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (num_classes,) or not np.all(np.isfinite(probs)) or np.any(probs < 0) or probs.sum() <= 0:
            raise ValueError(f"`probs` needs {num_classes} non-negative values with a positive sum.")
        self.num_classes = int(num_classes)
        self.probs = torch.as_tensor(probs / probs.sum(), dtype=torch.float64)

    @classmethod
    def from_data(cls, data, num_classes: int | None = None) -> Labels:
        """Labels drawn with the shares the dataset's classes have (``data.label_shares()``), over ``num_classes``
        (a model's; default the data's own count), the classes the data lacks at share 0."""
        if getattr(data, "num_classes", None) is None:
            raise ValueError(f"The dataset {getattr(data, 'name', data)!r} has no class labels.")
        shares = np.asarray(data.label_shares(), dtype=np.float64)
        total = len(shares) if num_classes is None else check_int("num_classes", num_classes, len(shares))
        return cls(total, probs=np.pad(shares, (0, total - len(shares))))

    def __call__(self, seeds: Sequence[int]) -> torch.Tensor:
        """One label per sample seed, int64 (B,), on the CPU."""
        if self.balanced:
            return torch.tensor([int(s) % self.num_classes for s in seeds], dtype=torch.int64)
        out = torch.empty(len(seeds), dtype=torch.int64)
        for i, s in enumerate(seeds):
            gen = torch.Generator().manual_seed(condition_seed(int(s)))
            out[i] = torch.multinomial(self.probs, 1, generator=gen)[0]
        return out

    def state(self) -> dict:
        """JSON-serialisable description (artifacts record it)."""
        extra = {} if self.prompts is None else {"prompts": self.prompts}
        if self.balanced:
            return {"kind": "labels", "num_classes": self.num_classes, "balanced": True, **extra}
        return {"kind": "labels", "num_classes": self.num_classes, "probs": self.probs.tolist(), **extra}

    def __repr__(self) -> str:
        return f"Labels(num_classes={self.num_classes}{', balanced' if self.balanced else ''})"


LABEL_SOURCES = ("data", "balanced")  # the named condition sources of the stages' `labels` parameter


def check_label_source(labels) -> None:
    """ValueError unless ``labels`` is a stage's condition source: ``"data"`` (the dataset's label shares),
    ``"balanced"`` (every class equally often) or a non-empty list of class labels (drawn uniformly)."""
    if isinstance(labels, str):
        check_choice("labels", labels, LABEL_SOURCES, what="label source")
        return
    if (
        not isinstance(labels, (list, tuple))
        or not labels
        or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in labels)
    ):
        raise ValueError(
            f"`labels` must be 'data', 'balanced' or a non-empty list of class labels (ints >= 0), got {labels!r}."
        )


def condition_source(denoiser, data, labels="data") -> Labels | None:
    """The condition source of a stage's ``labels`` parameter for ``denoiser`` (None for an unconditional model):
    ``"data"``, the data's label shares (:meth:`Labels.from_data`); ``"balanced"``, every one of the model's classes
    equally often; a list, those labels drawn uniformly. For a text-conditional model the "classes" are its prompts
    (indices into its prompt table, :mod:`crs.prompts`); the data has no shares of them, so ``"data"`` draws them
    uniformly.

    Raises:
        ValueError: a bad ``labels``, ``"data"`` with a dataset that has no labels or more classes than the model
            (fewer are the model's first ones: a labelled subset), or a listed label the model does not have.
    """
    check_label_source(labels)
    spec = conditioning_of(denoiser)
    if spec is None:
        return None
    digest = getattr(denoiser, "prompt_digest", None) if spec.kind == "prompts" else None
    if labels == "balanced":
        return Labels(spec.num_classes, balanced=True, prompts=digest)
    if labels == "data" and spec.kind == "prompts":
        return Labels(spec.num_classes, prompts=digest)
    if labels == "data":
        if data is None:
            raise ValueError(
                "`labels` 'data' draws the dataset's label shares, and there is no dataset: give 'balanced' or a list."
            )
        found = getattr(data, "num_classes", None)
        if found is not None and found > spec.num_classes:
            raise ValueError(
                f"The dataset {getattr(data, 'name', data)!r} has {found} classes and the model only "
                f"{spec.num_classes}: give `labels` 'balanced' or a list of the model's labels."
            )
        return Labels.from_data(data, spec.num_classes)  # data labels are the model's labels 0 .. found - 1
    return Labels(spec.num_classes, choices=labels, prompts=digest)


def with_guidance(denoiser, scale: float | None):
    """``denoiser`` guided with ``scale`` (:class:`Guided`), or unchanged for None (a conditional model then acts as
    itself, ``w = 1``); ValueError for a scale given to an unconditional model (naming the parameter)."""
    if scale is None:
        return denoiser
    if conditioning_of(denoiser) is None:
        raise ValueError(f"`guidance` = {scale!r} needs a conditional model; this one is unconditional (give None).")
    return Guided(denoiser, scale)


def default_conditions(denoiser, data) -> Labels | None:
    """The condition source a stage uses when none is given: the data's label shares (:meth:`Labels.from_data`) for
    a conditional model, None for an unconditional one (:func:`condition_source` with ``"data"``)."""
    return condition_source(denoiser, data, "data")


def check_conditions(denoiser, conditions) -> None:
    """ValueError when a conditional model gets no condition source, or an unconditional one gets one."""
    spec = conditioning_of(denoiser)
    if spec is None and conditions is not None:
        raise ValueError("The model is unconditional: it takes no `conditions`.")
    if spec is not None and conditions is None:
        raise ValueError(
            f"The model is conditional ({spec.num_classes} classes): give `conditions`, e.g. "
            f"crs.conditioning.Labels({spec.num_classes}) or Labels.from_data(data)."
        )
    if spec is not None and getattr(conditions, "num_classes", spec.num_classes) != spec.num_classes:
        raise ValueError(
            f"The condition source draws from {conditions.num_classes} classes; the model has {spec.num_classes}."
        )


class Bound:
    """A conditional denoiser with one batch's conditions fixed: ``D(x, sigma) = denoiser(x, sigma, cond)``.

    Every other attribute (``shape``, ``sigma_min``, ...) is the denoiser's. ``x`` must hold exactly the batch
    ``cond`` was drawn for (its first dimension is checked).
    """

    def __init__(self, denoiser, cond: torch.Tensor):
        self.denoiser, self.cond = denoiser, cond

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if x.shape[0] != self.cond.shape[0]:
            raise ValueError(f"A batch of {x.shape[0]} samples for {self.cond.shape[0]} conditions.")
        return self.denoiser(x, sigma, self.cond.to(x.device))

    def __getattr__(self, name):
        if name in ("denoiser", "cond"):
            raise AttributeError(name)
        return getattr(self.denoiser, name)


def bind(denoiser, cond: torch.Tensor | None, rows: slice | None = None):
    """``denoiser`` with the batch's conditions fixed (:class:`Bound`): ``cond``, or its ``rows`` when given (the
    batch a loop is at); unchanged when ``cond`` is None."""
    if cond is None:
        return denoiser
    cond = cond if rows is None else cond[rows]
    spec = conditioning_of(denoiser)
    if spec is None:
        raise ValueError("The model is unconditional: it takes no conditions.")
    return Bound(denoiser, spec.check(cond, len(cond)))


class Guided:
    """Classifier-free guidance: ``D_w(x; sigma, c) = D(x; sigma, null) + w (D(x; sigma, c) - D(x; sigma, null))``.

    Args:
        model: a conditional denoiser whose ``null`` label is its unconditional branch.
        scale: the guidance scale ``w`` (>= 0; 1: the conditional model, 0: the unconditional one).

    Every attribute other than ``scale`` and ``model`` is the model's. Both branches run in one network call on a
    doubled batch; ``w`` of 0 or 1 needs one branch only (:func:`guidance_evaluations`).
    """

    def __init__(self, model, scale: float):
        spec = conditioning_of(model)
        if spec is None:
            raise ValueError("Guidance needs a conditional model (one that declares `conditioning`).")
        check_number("scale", scale, minimum=0.0)
        self.model, self.scale = model, float(scale)

    def __call__(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        spec = self.model.conditioning
        n = x.shape[0]
        cond = spec.labels(cond, n, x.device)
        if self.scale == 1.0:
            return self.model(x, sigma, cond)
        null = spec.null_like(n, x.device)
        if self.scale == 0.0:
            return self.model(x, sigma, null)
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(n)
        both = self.model(torch.cat([x, x]), torch.cat([s, s]).to(x.device), torch.cat([cond, null]))
        d_cond, d_uncond = both[:n], both[n:]
        return d_uncond + self.scale * (d_cond - d_uncond)

    def __getattr__(self, name):
        if name in ("model", "scale"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"Guided({self.model!r}, scale={self.scale:g})"


def guidance_of(denoiser) -> float | None:
    """The guidance scale a conditional denoiser applies (1 for a plain conditional model); None: unconditional."""
    if conditioning_of(denoiser) is None:
        return None
    return denoiser.scale if isinstance(denoiser, Guided) else 1.0


def guidance_evaluations(denoiser) -> int:
    """Network calls per denoiser evaluation: 2 for guidance with a scale other than 0 and 1, else 1."""
    return 2 if isinstance(denoiser, Guided) and denoiser.scale not in (0.0, 1.0) else 1
