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

__all__ = [
    "DiffusersDenoiser", "EDMDenoiser", "MLPNet", "build_denoiser", "load_denoiser", "resolve_device", "resolve_models", "unet",
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


def unet(shape: tuple[int, int, int], block_out_channels=(32, 64), layers_per_block: int = 1, attention: bool = True, norm_num_groups: int = 8):
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
        sample_size=h, in_channels=c, out_channels=c, block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block, down_block_types=tuple(down), up_block_types=tuple(up),
        norm_num_groups=norm_num_groups, attention_head_dim=block_out_channels[-1] // 2,
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
            "format": "crs.EDMDenoiser", "sigma_data": self.sigma_data, "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max, "net_class": type(self.net).__name__, "shape": list(self.shape),
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
    def from_pretrained(cls, folder) -> "EDMDenoiser":
        """Load a folder written by :meth:`save_pretrained` (ValueError when it is not one)."""
        folder = Path(folder)
        cfg_path = folder / DENOISER_FILE
        if not (folder / "config.json").is_file():
            raise ValueError(f"No diffusers model at {str(folder)!r} (no config.json).")
        if not cfg_path.is_file():
            raise ValueError(f"{str(folder)!r} holds a diffusers model but no {DENOISER_FILE}: it was not made by crs "
                         "(for a diffusers model give the pipeline folder, with model_index.json and its scheduler).")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("net_class") == "UNet2DModel":
            net = UNet2DModel.from_pretrained(folder)
        elif cfg.get("net_class") == "MLPNet":
            net = MLPNet.from_pretrained(folder)
        else:
            raise ValueError(f"Unsupported network class {cfg.get('net_class')!r} in {str(cfg_path)!r}; supported: UNet2DModel, MLPNet.")
        return cls(net, cfg["sigma_data"], cfg["sigma_min"], cfg["sigma_max"])


def build_denoiser(shape: tuple[int, ...], sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0, seed: int = 0, **net_kwargs) -> EDMDenoiser:
    """A freshly initialised denoiser for samples of ``shape``: MLP for (dim,), UNet for (C, H, W).

    Initialisation is seeded (``seed``) so that two builds are identical.
    """
    from crs.schedules import check_sigma_range

    check_sigma_range(sigma_min, sigma_max)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # diffusers initialises with the global generator: seed it, then restore it
    try:
        if len(shape) == 1:
            net = MLPNet(dim=shape[0], **net_kwargs)
        elif len(shape) == 3:
            net = unet(tuple(shape), **net_kwargs)
        else:
            raise ValueError(f"No default network for samples of shape {tuple(shape)}; expected (dim,) or (C, H, W).")
    finally:
        torch.random.set_rng_state(state)
    return EDMDenoiser(net, sigma_data, sigma_min, sigma_max)


def _resolve_hub(model: str) -> Path:
    """Download (or find in the cache) a hub repository; a clear error when offline or misspelt."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model))
    except Exception as exc:  # offline, unknown repository, no network: all the same to the user
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"Could not load the hub model {model!r} ({why}). Point `model` at a local folder instead.") from exc


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` pass
    (ValueError for a GPU that is not there, or an unknown name)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but no CUDA GPU is visible; use 'cpu' or 'auto'.")
        return device
    raise ValueError(f"Unknown device {device!r}; valid choices: auto, cpu, cuda, cuda:N.")


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
        if data is None or not hasattr(data, "denoiser"):
            raise ValueError(f"model='analytic' needs an analytic dataset (gaussian, gmm); {data!r} has no exact denoiser.")
        return data.denoiser
    if not isinstance(model, str) or not model:
        raise ValueError(f"`model` must be 'analytic', a folder or a hub id, got {model!r}.")
    path = Path(model)
    if not path.exists():
        if model.count("/") != 1 or model.startswith((".", "/")) or path.suffix:
            raise ValueError(f"No model at {model!r}: give model='analytic', a folder that exists, or a hub id 'org/name'.")
        path = _resolve_hub(model)
    denoiser = DiffusersDenoiser.from_pipeline_folder(path) if (Path(path) / "model_index.json").is_file() else EDMDenoiser.from_pretrained(path)
    if data is not None and tuple(data.shape) != tuple(denoiser.shape):
        raise ValueError(f"The model at {model!r} takes samples of shape {tuple(denoiser.shape)}, but the dataset gives {tuple(data.shape)}.")
    return denoiser.eval().to(resolve_device(device))


def resolve_models(names, run_dir, data, device: str = "cpu") -> dict:
    """Denoisers for a list of model names: ``"analytic"``, a name under ``run_dir/models/``, or a
    folder / hub id (see :func:`load_denoiser`). Returns ``{name: denoiser}`` in the given order."""
    models = {}
    for name in names:
        local = Path(run_dir) / "models" / name
        models[name] = load_denoiser(str(local) if name != "analytic" and local.is_dir() else name, data, device)
    return models


class DiffusersDenoiser(nn.Module):
    """A discrete-time diffusers model (DDPM-style UNet + scheduler) as a denoiser on continuous sigma.

    The VE input ``x = x0 + sigma * eps`` becomes the VP input ``alpha x`` (``alpha = 1/sqrt(1+sigma^2)``);
    the timestep is continuous, by interpolating ``log sigma`` in the scheduler's table of training
    sigmas ``sqrt((1 - alphas_cumprod) / alphas_cumprod)`` (as k-diffusion does for such models); the
    output is turned into an x0-prediction according to ``prediction_type`` (``epsilon``,
    ``v_prediction`` or ``sample``). The noise range is the table's.

    Args:
        unet: a diffusers UNet (called as ``unet(x_vp, t).sample``).
        alphas_cumprod: the scheduler's cumulative alphas (T,).
        prediction_type: the scheduler's prediction type.
    """

    PREDICTIONS = ("epsilon", "v_prediction", "sample")

    def __init__(self, unet: nn.Module, alphas_cumprod, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in self.PREDICTIONS:
            raise ValueError(f"Unsupported prediction type {prediction_type!r}; supported: {', '.join(self.PREDICTIONS)}.")
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.unet, self.prediction_type = unet, prediction_type
        self.register_buffer("log_sigmas", torch.log(torch.sqrt((1 - ac) / ac)), persistent=False)
        self.sigma_min, self.sigma_max = float(self.log_sigmas.min().exp()), float(self.log_sigmas.max().exp())

    @property
    def shape(self) -> tuple[int, ...]:
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return (cfg.in_channels, size, size)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep of each sigma: linear interpolation of log sigma in the training table."""
        log_s = torch.log(sigma.to(torch.float64)).clamp(self.log_sigmas[0], self.log_sigmas[-1])
        idx = torch.searchsorted(self.log_sigmas, log_s).clamp(1, len(self.log_sigmas) - 1)
        lo, hi = self.log_sigmas[idx - 1], self.log_sigmas[idx]
        return (idx - 1) + (log_s - lo) / (hi - lo)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """x (B, C, H, W) VE, sigma scalar or (B,) -> x0-prediction, same dtype and device as ``x``."""
        param = next(self.unet.parameters())
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0]).cpu()
        t = self.sigma_to_t(s)
        sb = s.reshape(-1, 1, 1, 1).to(param.device, param.dtype)
        alpha = 1.0 / torch.sqrt(1.0 + sb**2)
        x_vp = alpha * x.to(param.device, param.dtype)
        out = self.unet(x_vp, t.to(param.device, param.dtype)).sample.to(param.dtype)
        if self.prediction_type == "epsilon":
            x0 = (x_vp - alpha * sb * out) / alpha
        elif self.prediction_type == "v_prediction":
            x0 = alpha * x_vp - alpha * sb * out
        else:
            x0 = out
        return x0.to(x.device, x.dtype)

    @classmethod
    def from_pipeline_folder(cls, folder) -> "DiffusersDenoiser":
        """Load ``unet`` and ``scheduler`` from a saved diffusers pipeline folder (``model_index.json``)."""
        import diffusers

        folder = Path(folder)
        index = json.loads((folder / "model_index.json").read_text())
        if "unet" not in index or "scheduler" not in index:
            raise ValueError(f"The pipeline at {str(folder)!r} has no unet and scheduler ({sorted(index)}); "
                             "supported: unconditional DDPM-style pipelines.")
        if "vae" in index:
            raise ValueError(f"The pipeline at {str(folder)!r} is a latent model (it has a vae); latent models are not supported yet.")
        unet_cls = getattr(diffusers, index["unet"][1])
        sched_cls = getattr(diffusers, index["scheduler"][1])
        unet = unet_cls.from_pretrained(folder / "unet").eval()
        scheduler = sched_cls.from_pretrained(folder / "scheduler")
        return cls(unet, scheduler.alphas_cumprod, scheduler.config.get("prediction_type", "epsilon"))
