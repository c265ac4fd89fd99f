"""Denoisers: neural networks wrapped with EDM preconditioning, and loading by name.

A neural denoiser here is ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` (Karras et al. 2022,
EDM) with ``c_skip = sd^2/(sigma^2+sd^2)``, ``c_out = sigma sd/sqrt(sigma^2+sd^2)``,
``c_in = 1/sqrt(sigma^2+sd^2)``, ``c_noise = log(sigma)/4`` and ``sd = sigma_data``. The network
``F`` is a diffusers ``UNet2DModel`` for images or :class:`MLPNet` (also a diffusers model) for
low-dimensional data; both are saved with ``save_pretrained`` (``config.json`` plus safetensors), so
a model made here loads with diffusers' own ``from_pretrained``. The preconditioning constants sit
beside them in ``crs_denoiser.json``.

``load_denoiser(model, data)`` resolves the notebooks' ``model`` parameter: ``"analytic"`` (the
exact denoiser of an analytic dataset), a local folder, or a Hugging Face hub id.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from crs.args import resolve_device
from crs.protocols import AnalyticDataset

__all__ = [
    "DiffusersDenoiser",
    "EDMDenoiser",
    "LatentData",
    "MLPNet",
    "build_denoiser",
    "fit_sigma_range",
    "load_denoiser",
    "locate_model",
    "model_space",
    "pixel_features",
    "resolve_device",
    "unet",
]

DENOISER_FILE = "crs_denoiser.json"


class MLPNet(ModelMixin, ConfigMixin):
    """Small MLP ``F(x, c_noise)`` for low-dimensional data, a diffusers model.

    Args:
        dim: data dimension.
        hidden: width of the hidden layers.
        layers: number of hidden layers.
        fourier: number of Fourier frequencies (1 .. 64, geometric) embedding ``c_noise``.
    """

    @register_to_config
    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, fourier: int = 16):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.linspace(0.0, 6.0, fourier), persistent=False)
        widths = [dim + 2 * fourier] + [hidden] * layers
        blocks = []
        for a, b in zip(widths[:-1], widths[1:]):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        self.body = nn.Sequential(*blocks, nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """x (B, dim), c_noise (B,) -> (B, dim)."""
        angle = c_noise[:, None] * self.freqs[None, :]
        return self.body(torch.cat([x, torch.sin(angle), torch.cos(angle)], dim=1))


def unet(
    shape: tuple[int, int, int],
    block_out_channels=(32, 64),
    layers_per_block: int = 1,
    attention: bool = True,
    norm_num_groups: int = 8,
):
    """A small diffusers ``UNet2DModel`` for images of ``shape`` (C, H, W) with H = W.

    Args:
        block_out_channels: channels per resolution level (one down-sampling between levels).
        layers_per_block: ResNet layers per level.
        attention: self-attention at the lowest resolution.
    """
    c, h, w = shape
    if h != w:
        raise ValueError(f"Images must be square, got {h}x{w}.")
    levels = len(block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=h,
        in_channels=c,
        out_channels=c,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=norm_num_groups,
        attention_head_dim=block_out_channels[-1] // 2,
    )


class EDMDenoiser(nn.Module):
    """EDM-preconditioned denoiser ``D(x; sigma)`` around a diffusers network.

    Args:
        net: a diffusers ``UNet2DModel`` (images) or :class:`MLPNet`.
        sigma_data: standard deviation of the data (EDM: 0.5).
        sigma_min, sigma_max: the noise range the model is meant for (used to check schedules).
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        self.net, self.sigma_data = net, float(sigma_data)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._is_unet = isinstance(net, UNet2DModel)

    is_latent = False

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        """The data's shape: :attr:`shape` (an EDM denoiser works on the data itself)."""
        return self.shape

    def decode(self, latents: torch.Tensor, batch_size: int = 64, quantize: bool = True) -> torch.Tensor:
        raise ValueError("This model denoises the data itself: its samples need no decoding.")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample the network takes."""
        cfg = self.net.config
        if self._is_unet:
            size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
            return (cfg.in_channels, size, size)
        return (cfg.dim,)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """x (B, *shape), sigma scalar or (B,) -> D(x; sigma), same dtype and device as ``x``."""
        param = next(self.net.parameters())
        xin = x.to(param.device, param.dtype)
        s = torch.as_tensor(sigma, device=param.device, dtype=param.dtype).reshape(-1).expand(x.shape[0])
        sb = s.reshape(-1, *([1] * (x.ndim - 1)))
        sd2 = self.sigma_data**2
        c_skip, c_out = sd2 / (sb**2 + sd2), sb * self.sigma_data / torch.sqrt(sb**2 + sd2)
        c_in, c_noise = 1.0 / torch.sqrt(sb**2 + sd2), torch.log(s) / 4.0
        out = self.net(c_in * xin, c_noise)
        out = out.sample if hasattr(out, "sample") else out
        return (c_skip * xin + c_out * out.to(param.dtype)).to(x.device, x.dtype)

    def config(self) -> dict:
        return {
            "format": "crs.EDMDenoiser",
            "sigma_data": self.sigma_data,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "net_class": type(self.net).__name__,
            "shape": list(self.shape),
        }

    def save_pretrained(self, folder) -> Path:
        """Write the network (diffusers format) and ``crs_denoiser.json`` into ``folder``, atomically.

        The model is written to a temporary folder first and moved into place, so a crash leaves
        either the old model or the new one, never a mixture.
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
        try:
            self.net.save_pretrained(tmp)
            (tmp / DENOISER_FILE).write_text(json.dumps(self.config(), indent=1) + "\n")
            old = None
            if folder.exists():
                old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
                os.replace(folder, old / "m")
            os.replace(tmp, folder)
            if old is not None:
                shutil.rmtree(old)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return folder

    @classmethod
    def from_pretrained(cls, folder) -> EDMDenoiser:
        """Load a folder written by :meth:`save_pretrained` (ValueError when it is not one)."""
        folder = Path(folder)
        cfg_path = folder / DENOISER_FILE
        if not (folder / "config.json").is_file():
            raise ValueError(f"No diffusers model at {str(folder)!r} (no config.json).")
        if not cfg_path.is_file():
            raise ValueError(
                f"{str(folder)!r} holds a diffusers model but no {DENOISER_FILE}: it was not made by crs "
                "(for a diffusers model give the pipeline folder, with model_index.json and its scheduler)."
            )
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("net_class") == "UNet2DModel":
            net = UNet2DModel.from_pretrained(folder)
        elif cfg.get("net_class") == "MLPNet":
            net = MLPNet.from_pretrained(folder)
        else:
            raise ValueError(
                f"Unsupported network class {cfg.get('net_class')!r} in {str(cfg_path)!r}; supported: UNet2DModel, "
                "MLPNet."
            )
        return cls(net, cfg["sigma_data"], cfg["sigma_min"], cfg["sigma_max"])


def build_denoiser(
    shape: tuple[int, ...],
    sigma_data: float = 0.5,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    seed: int = 0,
    **net_kwargs,
) -> EDMDenoiser:
    """A freshly initialised denoiser for samples of ``shape``: MLP for (dim,), UNet for (C, H, W).

    Initialisation is seeded (``seed``) so that two builds are identical.
    """
    from crs.schedules import check_sigma_range

    check_sigma_range(sigma_min, sigma_max)
    with torch.random.fork_rng(devices=[]):  # diffusers initialises with the global generator: seed a fork of it
        torch.manual_seed(seed)
        if len(shape) == 1:
            net = MLPNet(dim=shape[0], **net_kwargs)
        elif len(shape) == 3:
            net = unet(tuple(shape), **net_kwargs)
        else:
            raise ValueError(f"No default network for samples of shape {tuple(shape)}; expected (dim,) or (C, H, W).")
    return EDMDenoiser(net, sigma_data, sigma_min, sigma_max)


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


def load_denoiser(model: str, data=None, device: str = "cpu"):
    """Return ``D(x, sigma)`` for the notebooks' ``model`` parameter.

    Args:
        model: ``"analytic"`` (the dataset's exact denoiser), a local folder written by
            :meth:`EDMDenoiser.save_pretrained`, a saved unconditional diffusers pipeline (a folder
            with ``model_index.json``: DDPM-style UNet + scheduler, eps/v/sample prediction), or a
            hub id ``"org/name"`` of either.
        data: the dataset the model is used with; its sample shape must match the model's.
        device: where a neural model is put (see :func:`resolve_device`); it takes inputs from
            anywhere and returns outputs on the input's device.

    Raises:
        ValueError: unknown or unreachable model, or a shape mismatch (naming both shapes).
    """
    if model == "analytic":
        if not isinstance(data, AnalyticDataset):
            raise ValueError(
                f"model='analytic' needs an analytic dataset (gaussian, gmm); {data!r} has no exact denoiser."
            )
        return data.denoiser
    path = locate_model(model)
    if (Path(path) / "model_index.json").is_file():
        denoiser = DiffusersDenoiser.from_pipeline_folder(path)
    elif (Path(path) / DENOISER_FILE).is_file() or not (Path(path) / "config.json").is_file():
        denoiser = EDMDenoiser.from_pretrained(path)
    else:
        denoiser = DiffusersDenoiser.from_model_folder(path)
    pixels = tuple(denoiser.pixel_shape)
    if data is not None and tuple(data.shape) != pixels:
        what = (
            f"decodes to images of shape {pixels}"
            if pixels != tuple(denoiser.shape)
            else f"takes samples of shape {pixels}"
        )
        raise ValueError(f"The model at {model!r} {what}, but the dataset gives {tuple(data.shape)}.")
    return denoiser.eval().to(resolve_device(device))


class DiffusersDenoiser(nn.Module):
    """A discrete-time diffusers model (DDPM-style UNet + scheduler, optionally a VAE) as a denoiser on sigma.

    The VE input ``x = x0 + sigma * eps`` becomes the VP input ``alpha x`` (``alpha = 1/sqrt(1+sigma^2)``);
    the timestep is continuous, by interpolating ``log sigma`` in the scheduler's table of training
    sigmas ``sqrt((1 - alphas_cumprod) / alphas_cumprod)`` (as k-diffusion does for such models); the
    output is turned into an x0-prediction according to ``prediction_type`` (``epsilon``,
    ``v_prediction`` or ``sample``). The noise range is the table's.

    A latent model (a pipeline with ``vqvae`` or ``vae``, e.g. LDM) denoises in latent space:
    :attr:`shape` is the latent shape, :attr:`pixel_shape` the image shape, and :meth:`encode` /
    :meth:`decode` map between them with the VAE's ``scaling_factor`` (as the diffusers pipelines do).

    Args:
        unet: a diffusers UNet (called as ``unet(x_vp, t).sample``).
        alphas_cumprod: the scheduler's cumulative alphas (T,).
        prediction_type: the scheduler's prediction type.
        vae: ``VQModel`` or ``AutoencoderKL`` of a latent model; None for pixel-space models.
    """

    PREDICTIONS = ("epsilon", "v_prediction", "sample")
    sigma_data = 0.5  # no preconditioning of its own: EDM's constant, used only to weight losses

    def __init__(self, unet: nn.Module, alphas_cumprod, prediction_type: str = "epsilon", vae: nn.Module | None = None):
        super().__init__()
        if prediction_type not in self.PREDICTIONS:
            raise ValueError(
                f"Unsupported prediction type {prediction_type!r}; supported: {', '.join(self.PREDICTIONS)}."
            )
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.unet, self.prediction_type, self.vae = unet, prediction_type, vae
        self.register_buffer("log_sigmas", torch.log(torch.sqrt((1 - ac) / ac)), persistent=False)
        self.sigma_min, self.sigma_max = float(self.log_sigmas.min().exp()), float(self.log_sigmas.max().exp())

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample the UNet denoises (latent shape for latent models)."""
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return (cfg.in_channels, size, size)

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        """Shape of one image: :attr:`shape` for pixel models, the VAE's decoded shape for latent ones."""
        if self.vae is None:
            return self.shape
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.in_channels, self.shape[1] * factor, self.shape[2] * factor)

    def _vae_scale(self) -> tuple[float, float]:
        cfg = self.vae.config
        return float(getattr(cfg, "scaling_factor", None) or 1.0), float(getattr(cfg, "shift_factor", None) or 0.0)

    def encode(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Images (N, *pixel_shape) in [-1, 1] -> latents (N, *shape), float32 on the images' device.

        ``VQModel``: the encoder output before quantisation (what LDM's UNet is trained on);
        ``AutoencoderKL``: the mean of the latent distribution. Then ``(z - shift) * scaling_factor``.
        """
        if self.vae is None:
            raise ValueError("This model has no VAE: it denoises pixels, there is nothing to encode.")
        param = next(self.vae.parameters())
        scale, shift = self._vae_scale()
        out = []
        for start in range(0, len(images), batch_size):
            with torch.no_grad():
                enc = self.vae.encode(images[start : start + batch_size].to(param.device, param.dtype))
            z = enc.latents if hasattr(enc, "latents") else enc.latent_dist.mode()
            out.append(((z.float() - shift) * scale).to(images.device))
        return torch.cat(out)

    def decode(self, latents: torch.Tensor, batch_size: int = 64, quantize: bool = True) -> torch.Tensor:
        """Latents (N, *shape) -> images (N, *pixel_shape) clipped to [-1, 1], float32 on the latents' device.

        Args:
            quantize: for a ``VQModel``, snap the latents to the codebook first, as ``LDMPipeline``
                does with its samples. False decodes the latents as they are: the ``fid`` measure
                uses that for noised latents, which the quantiser would otherwise snap back onto
                the codebook (removing the noise it measures). Ignored for ``AutoencoderKL``.
        """
        if self.vae is None:
            raise ValueError("This model has no VAE: its samples are already images.")
        param = next(self.vae.parameters())
        scale, shift = self._vae_scale()
        extra = {} if quantize or not hasattr(self.vae, "quantize") else {"force_not_quantize": True}
        out = []
        for start in range(0, len(latents), batch_size):
            z = latents[start : start + batch_size].to(param.device, param.dtype) / scale + shift
            with torch.no_grad():
                out.append(self.vae.decode(z, **extra).sample.float().clamp(-1, 1).to(latents.device))
        return torch.cat(out)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep of each sigma: linear interpolation of log sigma in the training table.

        Computed in float64 on the table's device (the model's), wherever ``sigma`` lives.
        """
        table = self.log_sigmas.to(torch.float64)
        log_s = torch.log(sigma.to(table.device, torch.float64)).clamp(table[0], table[-1])
        idx = torch.searchsorted(table, log_s).clamp(1, len(table) - 1)
        lo, hi = table[idx - 1], table[idx]
        return (idx - 1) + (log_s - lo) / (hi - lo)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """x (B, C, H, W) VE, sigma scalar or (B,) -> x0-prediction, same dtype and device as ``x``.

        The model runs on its own device: inputs from anywhere are moved there and the result back.
        """
        param = next(self.unet.parameters())
        s = torch.as_tensor(sigma, dtype=torch.float64).to(param.device).reshape(-1).expand(x.shape[0])
        t = self.sigma_to_t(s)
        sb = s.reshape(-1, 1, 1, 1).to(param.dtype)
        alpha = 1.0 / torch.sqrt(1.0 + sb**2)
        x_vp = alpha * x.to(param.device, param.dtype)
        out = self.unet(x_vp, t.to(param.dtype)).sample.to(param.dtype)
        if self.prediction_type == "epsilon":
            x0 = (x_vp - alpha * sb * out) / alpha
        elif self.prediction_type == "v_prediction":
            x0 = alpha * x_vp - alpha * sb * out
        else:
            x0 = out
        return x0.to(x.device, x.dtype)

    @classmethod
    def from_pipeline_folder(cls, folder) -> DiffusersDenoiser:
        """Load ``unet``, ``scheduler`` and, for latent models, ``vqvae`` / ``vae`` from a saved pipeline folder.

        Raises:
            ValueError: a conditional UNet, a scheduler without a discrete noise table, or a
                pipeline without unet and scheduler (naming what is supported).
        """
        import diffusers

        folder = Path(folder)
        index = json.loads((folder / "model_index.json").read_text())
        supported = "unconditional pipelines with a UNet2DModel and a discrete-time scheduler (DDPM, DDIM, LDM)"
        if "unet" not in index or "scheduler" not in index:
            raise ValueError(
                f"The pipeline at {str(folder)!r} has no unet and scheduler ({sorted(index)}); supported: {supported}."
            )
        unet_name, sched_name = index["unet"][1], index["scheduler"][1]
        if unet_name != "UNet2DModel":
            raise ValueError(
                f"The pipeline at {str(folder)!r} has a {unet_name} (conditional models are not supported); "
                f"supported: {supported}."
            )
        unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
        scheduler = getattr(diffusers, sched_name).from_pretrained(folder / "scheduler")
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(
                f"Unsupported scheduler {sched_name} (no discrete noise table `alphas_cumprod`); supported: "
                f"{supported}."
            )
        vae_key = next((k for k in LATENT_KEYS if index.get(k) and index[k][1]), None)
        vae = getattr(diffusers, index[vae_key][1]).from_pretrained(folder / vae_key).eval() if vae_key else None
        return cls(unet, scheduler.alphas_cumprod, scheduler.config.get("prediction_type", "epsilon"), vae)

    @classmethod
    def from_model_folder(cls, folder) -> DiffusersDenoiser:
        """A bare ``UNet2DModel`` folder (``config.json`` and weights, no pipeline around it).

        Its noise table comes from a ``scheduler_config.json`` beside it when there is one; otherwise
        DDPM's (1000 linear betas from 1e-4 to 0.02, eps-prediction) is assumed, with a warning.
        """
        import warnings

        import diffusers

        folder = Path(folder)
        cls_name = json.loads((folder / "config.json").read_text()).get("_class_name")
        if cls_name != "UNet2DModel":
            raise ValueError(
                f"The model at {str(folder)!r} is a {cls_name}; supported bare models: UNet2DModel "
                "(or give a pipeline folder with model_index.json)."
            )
        unet = diffusers.UNet2DModel.from_pretrained(folder).eval()
        if (folder / "scheduler_config.json").is_file():
            sched_name = json.loads((folder / "scheduler_config.json").read_text()).get("_class_name", "DDPMScheduler")
            scheduler = getattr(diffusers, sched_name).from_pretrained(folder)
        else:
            warnings.warn(
                f"{str(folder)!r} holds a bare UNet2DModel with no scheduler: assuming DDPM's noise table "
                "(1000 linear betas 1e-4 .. 0.02) and eps-prediction.",
                stacklevel=3,
            )
            scheduler = diffusers.DDPMScheduler()
        return cls(unet, scheduler.alphas_cumprod, scheduler.config.get("prediction_type", "epsilon"))


LATENT_KEYS = ("vqvae", "vae")


class LatentData:
    """A pixel dataset seen through a latent model's VAE: ``sample`` returns encoded latents.

    Args:
        data: an image dataset (``sample(n, generator)`` in [-1, 1], ``shape`` = the model's pixel shape).
        denoiser: a latent :class:`DiffusersDenoiser`.
    """

    def __init__(self, data, denoiser: DiffusersDenoiser, batch_size: int = 64):
        self.data, self.denoiser, self.batch_size = data, denoiser, batch_size
        self.name = f"{data.name} (latents)"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.denoiser.shape)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images drawn from the dataset with ``generator``, encoded: float32 (n, *shape) on the CPU."""
        return self.denoiser.encode(self.data.sample(n, generator), self.batch_size).cpu()


def model_space(data, denoiser):
    """The data in the space the denoiser works in: :class:`LatentData` for latent models, else ``data``."""
    return LatentData(data, denoiser) if denoiser.is_latent else data


def pixel_features(feature_fn, denoiser):
    """Features of model-space samples: ``feature_fn(decode(z))`` for latent models, else ``feature_fn``.

    The ``fid`` measure of a latent model compares images: the noised (VP-scaled) latents are decoded
    first, without a VQ model's quantiser (which would snap the noise back onto its codebook).
    """
    if not denoiser.is_latent or feature_fn is None:
        return feature_fn
    return lambda z: feature_fn(denoiser.decode(z, quantize=False))


def fit_sigma_range(denoiser, sigma_min: float | None = None, sigma_max: float | None = None) -> tuple[float, float]:
    """The noise range to use with a model: None takes the model's own end (EDM's 0.002 / 80 for models
    without a range, e.g. exact denoisers); a range reaching outside the model's is clipped to it with a warning.
    """
    import warnings

    lo, hi = denoiser.sigma_min, denoiser.sigma_max
    new_min = float(sigma_min) if sigma_min is not None else (lo if lo is not None else 0.002)
    new_max = float(sigma_max) if sigma_max is not None else (hi if hi is not None else 80.0)
    clipped_min = max(new_min, lo) if lo is not None else new_min
    clipped_max = min(new_max, hi) if hi is not None else new_max
    if (clipped_min, clipped_max) != (new_min, new_max):
        warnings.warn(
            f"The noise range [{new_min:.4g}, {new_max:.4g}] reaches outside the model's [{lo:.4g}, {hi:.4g}]: "
            f"clipped to [{clipped_min:.4g}, {clipped_max:.4g}].",
            stacklevel=2,
        )
    return clipped_min, clipped_max
