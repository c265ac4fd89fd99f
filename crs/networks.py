"""Networks with EDM preconditioning: the denoisers this package trains.

A neural denoiser here is ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` (Karras et al. 2022,
EDM) with ``c_skip = sd^2/(sigma^2+sd^2)``, ``c_out = sigma sd/sqrt(sigma^2+sd^2)``,
``c_in = 1/sqrt(sigma^2+sd^2)``, ``c_noise = log(sigma)/4`` and ``sd = sigma_data`` (docs/method.md,
section 6). The network ``F`` is a diffusers ``UNet2DModel`` for images or :class:`MLPNet` (also a diffusers
model) for low-dimensional data; both are saved with ``save_pretrained`` (``config.json`` plus safetensors),
so a model made here loads with diffusers' own ``from_pretrained``. The preconditioning constants sit beside
them in ``crs_denoiser.json``.
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

from crs.io import plain_modes
from crs.models import DENOISER_FILE, sample_side

__all__ = ["DENOISER_FILE", "EDMDenoiser", "MLPNet", "build_denoiser", "unet"]


class MLPNet(ModelMixin, ConfigMixin):
    """Small MLP ``F(x, c_noise)`` for low-dimensional data, a diffusers model.

    Args:
        dim: data dimension.
        hidden: width of the hidden layers.
        layers: number of hidden layers.
        fourier: number of Fourier frequencies (1 .. 64, geometric) embedding ``c_noise``.
        num_classes: class-conditional with this many classes (an embedding of ``num_classes + 1`` labels, the last
            the null label of the unconditional branch), or 0: unconditional.
    """

    @register_to_config
    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, fourier: int = 16, num_classes: int = 0):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.linspace(0.0, 6.0, fourier), persistent=False)
        self.label = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        widths = [dim + 2 * fourier] + [hidden] * layers
        blocks = []
        for a, b in zip(widths[:-1], widths[1:]):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        self.body = nn.Sequential(*blocks, nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, dim), c_noise (B,), class labels (B,) of a conditional net -> (B, dim). The label embedding is added
        to the first hidden layer's pre-activation."""
        angle = c_noise[:, None] * self.freqs[None, :]
        h = torch.cat([x, torch.sin(angle), torch.cos(angle)], dim=1)
        if self.label is None:
            return self.body(h)
        h = self.body[0](h) + self.label(class_labels)
        return self.body[1:](h)


def unet(
    shape: tuple[int, int, int],
    block_out_channels=(32, 64),
    layers_per_block: int = 1,
    attention: bool = True,
    norm_num_groups: int = 8,
    num_classes: int = 0,
):
    """A small diffusers ``UNet2DModel`` for images of ``shape`` (C, H, W) with H = W.

    Args:
        block_out_channels: channels per resolution level (one down-sampling between levels).
        layers_per_block: ResNet layers per level.
        attention: self-attention at the lowest resolution.
        num_classes: class-conditional with this many classes (diffusers' ``num_class_embeds = num_classes + 1``,
            a label embedding added to the time embedding as in EDM's networks; the last label is the null label of
            the unconditional branch), or 0: unconditional.
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
        num_class_embeds=num_classes + 1 if num_classes else None,
    )


PRECONDITIONINGS = ("edm", "flow")


class EDMDenoiser(nn.Module):
    """A preconditioned denoiser ``D(x; sigma)`` around a diffusers network: EDM's, or a flow-matching model's.

    ``precond="edm"`` (Karras et al. 2022): ``D = c_skip x + c_out F(c_in x, log(sigma) / 4)``.
    ``precond="flow"`` (rectified flow, as Stable Diffusion 3 and Flux are trained): the network predicts the
    velocity ``v = eps - x0`` from ``x_s = (1 - s) x`` at flow time ``s = sigma / (1 + sigma)`` (its time input
    ``1000 s`` for a UNet, as diffusers' flow models take it, ``s`` for the MLP), and ``D = x_s - s v``
    (docs/method.md, section 11); trained with the flow-matching loss (:class:`crs.training.EDMLoss` weights by
    ``1 / s^2``).

    Args:
        net: a diffusers ``UNet2DModel`` (images) or :class:`MLPNet`.
        sigma_data: standard deviation of the data (EDM: 0.5; the flow parameterisation does not use it).
        sigma_min, sigma_max: the noise range the model is meant for (used to check schedules).
        precond: ``"edm"`` or ``"flow"``.
    """

    def __init__(
        self,
        net: nn.Module,
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        precond: str = "edm",
    ):
        super().__init__()
        from crs.args import check_choice

        self.net, self.sigma_data = net, float(sigma_data)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.precond = check_choice("precond", precond, PRECONDITIONINGS, what="preconditioning")
        self._is_unet = isinstance(net, UNet2DModel)

    is_latent = False

    @property
    def conditioning(self):
        """The classes of a class-conditional network (:class:`crs.conditioning.Conditioning`, null label
        ``num_classes``), None for an unconditional one."""
        from crs.conditioning import Conditioning

        cfg = getattr(self.net, "config", None)  # any network F(x, c_noise) works; only ours declare classes
        if cfg is None:
            return None
        classes = (cfg.num_class_embeds or 1) - 1 if self._is_unet else getattr(cfg, "num_classes", 0)
        return Conditioning("labels", classes, classes) if classes else None

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
            size = sample_side(cfg.sample_size)
            return (cfg.in_channels, size, size)
        return (cfg.dim,)

    def forward(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, *shape), sigma scalar or (B,) -> D(x; sigma), same dtype and device as ``x``. A class-conditional
        network takes labels ``cond`` (B,); None (or the null label) gives its unconditional branch."""
        param = next(self.net.parameters())
        spec = self.conditioning
        if spec is None and cond is not None:
            raise ValueError("This model is unconditional: it takes no class labels.")
        labels = None if spec is None else spec.labels(cond, x.shape[0], param.device)
        xin = x.to(param.device, param.dtype)
        s = torch.as_tensor(sigma, device=param.device, dtype=param.dtype).reshape(-1).expand(x.shape[0])
        sb = s.reshape(-1, *([1] * (x.ndim - 1)))
        if self.precond == "flow":  # x_s = (1 - s) x, velocity out, D = x_s - s v
            c_in = 1.0 / (1.0 + sb)
            c_skip, c_out = c_in, -sb / (1.0 + sb)
            c_noise = s / (1.0 + s) * (1000.0 if self._is_unet else 1.0)
        else:
            sd2 = self.sigma_data**2
            c_skip, c_out = sd2 / (sb**2 + sd2), sb * self.sigma_data / torch.sqrt(sb**2 + sd2)
            c_in, c_noise = 1.0 / torch.sqrt(sb**2 + sd2), torch.log(s) / 4.0
        out = self.net(c_in * xin, c_noise) if labels is None else self.net(c_in * xin, c_noise, class_labels=labels)
        out = out.sample if hasattr(out, "sample") else out
        return (c_skip * xin + c_out * out.to(param.dtype)).to(x.device, x.dtype)

    def config(self) -> dict:
        return {
            "format": "crs.EDMDenoiser",
            "sigma_data": self.sigma_data,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "precond": self.precond,
            "net_class": type(self.net).__name__,
            "shape": list(self.shape),
        }

    def save_pretrained(self, folder) -> Path:
        """Write the network (diffusers format) and ``crs_denoiser.json`` into ``folder``, atomically.

        The model is written to a temporary folder first and moved into place, so a crash leaves
        either the old model or the new one, never a mixture; the folder and its files get the modes
        ``mkdir`` and ``open`` would give them (:func:`crs.io.plain_modes`).
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
        try:
            self.net.save_pretrained(tmp)
            (tmp / DENOISER_FILE).write_text(json.dumps(self.config(), indent=1) + "\n")
            plain_modes(tmp)  # mkdtemp's folder is 0700 and safetensors' file 0600: a model folder is not private
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
        return cls(net, cfg["sigma_data"], cfg["sigma_min"], cfg["sigma_max"], cfg.get("precond", "edm"))


def build_denoiser(
    shape: tuple[int, ...],
    sigma_data: float = 0.5,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    seed: int = 0,
    precond: str = "edm",
    **net_kwargs,
) -> EDMDenoiser:
    """A freshly initialised denoiser for samples of ``shape``: MLP for (dim,), UNet for (C, H, W), with EDM's
    preconditioning or a flow-matching model's (``precond``, :class:`EDMDenoiser`).

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
    return EDMDenoiser(net, sigma_data, sigma_min, sigma_max, precond)
