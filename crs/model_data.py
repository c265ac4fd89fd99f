"""A model's own samples as its data: rates and schedules for a checkpoint without its dataset (docs/method.md,
section 11).

The ``data``, ``noise`` and ``fid`` measures compare the model with samples of the data. For a checkpoint whose
dataset is not at hand (a fine-tune, a LoRA), :class:`ModelSamples` draws the model's own samples once, with a
converged teacher solve (:func:`crs.quality.solve_teacher`: many Heun steps of the probability-flow ODE, with its
own error estimate), and serves them as a dataset: ``sample``, ``sample_labeled`` and ``shape`` as any other, in the
model's own space (latents for a latent model). The measures then describe the distribution the model generates,
which is what its sampler traverses. The draw is seeded apart from every other stream
(:func:`crs.seeds.model_data_seed`), its cost is recorded (:attr:`ModelSamples.evaluations`), and it can be cached in
a file (written atomically, reused only for the same model, seed, size, steps, range and conditions).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import torch

from crs.args import check_int
from crs.conditioning import conditioning_of
from crs.seeds import model_data_seed

__all__ = ["DATA_FREE_DEFAULT", "ModelSamples", "ModelShape", "search_data"]

DATA_FREE_DEFAULT = {"n": 1024, "steps": 64}  # notebook 01's pool for a model given without a dataset


class ModelSamples:
    """``n`` samples of a model, drawn once by a fine ODE solve, as a dataset.

    Args:
        denoiser: the model (a conditional one with ``conditions``; guided or not: the samples are those of the
            ODE it defines).
        n: pool size; ``sample(m)`` draws ``m`` of them without replacement while ``m <= n``.
        seed: the run's seed; the pool uses :func:`crs.seeds.model_data_seed` of it.
        steps: Heun steps of the solve (even; its error estimate halves them).
        sigma_min, sigma_max: the solve's range (None: the model's own).
        conditions: a conditional model's condition source (:class:`crs.conditioning.Labels`); the pool's samples
            then carry labels (:meth:`sample_labeled`).
        cache: a file to keep the pool in: read when it holds this pool, written otherwise.
        name: recorded in artifacts (default: ``"<model> samples"``).

    Attributes:
        evaluations: network evaluations the pool cost (0 when read from the cache).
        seconds: seconds the draw took.
        teacher_error: the solve's own error estimate (RMS, :class:`crs.quality.Teacher`).
    """

    in_model_space = True  # latents for a latent model: crs.adapters.model_space passes it through

    def __init__(
        self,
        denoiser,
        n: int = 1024,
        seed: int = 0,
        steps: int = 64,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        conditions=None,
        cache=None,
        name: str | None = None,
        batch_size: int = 256,
    ):
        from crs.quality import solve_teacher
        from crs.schedules import fit_model_range

        check_int("n", n, 2)
        lo, hi = fit_model_range(denoiser, sigma_min, sigma_max)
        self.shape = tuple(denoiser.shape)
        self.name = name or f"{type(denoiser).__name__} samples"
        spec = conditioning_of(denoiser)
        self.num_classes = None if spec is None else spec.num_classes
        key = {
            "name": self.name,
            "shape": list(self.shape),
            "n": int(n),
            "seed": int(seed),
            "steps": int(steps),
            "range": [float(lo), float(hi)],
            "conditions": None if conditions is None else conditions.state(),
        }
        cached = self._read(cache, key)
        start = time.perf_counter()
        if cached is not None:
            self.x, self.labels, self.teacher_error = cached
            self.evaluations = 0
        else:
            teacher = solve_teacher(
                denoiser,
                self.shape,
                n,
                model_data_seed(seed),
                lo,
                hi,
                steps,
                batch_size=batch_size,
                conditions=conditions,
            )
            self.x, self.labels = teacher.endpoint.float().cpu(), teacher.cond
            self.teacher_error = float(teacher.error)
            self.evaluations = int(teacher.evaluations) * int(n)
            if cache is not None:
                self._write(cache, key)
        self.seconds = time.perf_counter() - start
        self.key = key

    @classmethod
    def from_cache(cls, cache) -> ModelSamples | None:
        """The pool a run already drew (notebook 01's ``run_dir/model_data.pt``), as it is: None when there is none.
        Stage 04 searches on it when there is no dataset."""
        if cache is None or not Path(cache).is_file():
            return None
        doc = torch.load(cache, map_location="cpu", weights_only=True)
        pool = cls.__new__(cls)
        pool.x, pool.labels, pool.teacher_error = doc["x"], doc.get("labels"), float(doc["teacher_error"])
        pool.key, pool.evaluations, pool.seconds = doc["key"], 0, 0.0
        pool.shape, pool.name = tuple(doc["key"]["shape"]), doc["key"]["name"]
        conditions = doc["key"].get("conditions") or {}
        pool.num_classes = conditions.get("num_classes") if pool.labels is not None else None
        return pool

    @staticmethod
    def _read(cache, key):
        if cache is None or not Path(cache).is_file():
            return None
        doc = torch.load(cache, map_location="cpu", weights_only=True)
        if doc.get("key") != key:
            return None
        return doc["x"], doc.get("labels"), float(doc["teacher_error"])

    def _write(self, cache, key) -> None:
        from crs.io import atomic_write_bytes

        buf = io.BytesIO()
        torch.save({"key": key, "x": self.x, "labels": self.labels, "teacher_error": self.teacher_error}, buf)
        atomic_write_bytes(cache, buf.getvalue())

    def __len__(self) -> int:
        return len(self.x)

    def _indices(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if n <= len(self.x):
            return torch.randperm(len(self.x), generator=generator)[:n]
        return torch.randint(len(self.x), (n,), generator=generator)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` of the pool's samples (without replacement while ``n`` <= the pool), float32 (n, *shape)."""
        return self.x[self._indices(int(n), generator)]

    def sample_labeled(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`sample`, with each sample's condition: ``(x, labels (n,))``; ValueError for an unconditional
        model's pool."""
        if self.labels is None:
            raise ValueError(f"{self.name!r} has no labels: the model is unconditional or was given no conditions.")
        idx = self._indices(int(n), generator)
        return self.x[idx], self.labels[idx]

    def label_shares(self) -> torch.Tensor:
        """Each label's share of the pool (float64 (num_classes,))."""
        if self.labels is None:
            raise ValueError(f"{self.name!r} has no labels.")
        counts = torch.bincount(self.labels, minlength=self.num_classes).double()
        return counts / counts.sum()

    def as_images(self, denoiser):
        """The pool seen as images (decoded by a latent model's VAE; the samples themselves otherwise): ``shape``
        and ``sample(n, generator)`` as a dataset, for figures."""
        return _Decoded(self, denoiser)

    def describe(self) -> str:
        """One line for the outputs: what stands in for the data, and what it cost."""
        cost = f"{self.evaluations:,} network evaluations" if self.evaluations else "read from its cache"
        return (
            f"the data: {len(self)} of the model's own samples (a {self.key['steps']}-step Heun solve, own error "
            f"{self.teacher_error:.1e}; {cost}, {self.seconds:.1f} s)"
        )


class _Decoded:
    """A pool of model samples as images (:meth:`ModelSamples.as_images`)."""

    def __init__(self, pool: ModelSamples, denoiser):
        self.pool, self.denoiser, self.name = pool, denoiser, pool.name
        self.shape = tuple(getattr(denoiser, "pixel_shape", pool.shape))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        x = self.pool.sample(n, generator)
        return self.denoiser.decode(x) if getattr(self.denoiser, "is_latent", False) else x


class ModelShape:
    """A model's sample shape standing in for the data of a schedule search when there is neither a dataset nor a
    pool of model samples: what the searches that need only a teacher (``gits``, ``optimal``) read. The CRS searches
    estimate rates on samples, so :meth:`sample` refuses, saying what to do."""

    in_model_space = True
    num_classes = None

    def __init__(self, denoiser):
        self.shape, self.name = tuple(denoiser.shape), "no dataset"

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise ValueError(
            "No dataset and no pool of the model's own samples: the CRS searches (crs, crs-select) estimate rates on "
            "samples. Run stage 01 with `data_free` first (its pool, run_dir/model_data.pt, is then searched on), or "
            "search with gits or optimal, which need no data."
        )

    sample_labeled = sample


def search_data(denoiser, run_dir, model: str | None = None):
    """What a schedule search runs on for a model given without a dataset: the pool of model samples notebook 01
    drew into ``run_dir/model_data.pt`` when it is this model's (``model``, the name notebook 01 was given, and its
    shape), else :class:`ModelShape`."""
    pool = ModelSamples.from_cache(Path(run_dir) / "model_data.pt")
    ours = pool is not None and pool.shape == tuple(denoiser.shape)
    ours = ours and (model is None or pool.key["name"] == f"{model} samples")
    return pool if ours else ModelShape(denoiser)
