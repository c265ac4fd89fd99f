"""The diffusers adapter: discrete-time diffusers models as denoisers on sigma, and data in a latent model's space.

:class:`DiffusersDenoiser` wraps a discrete-time diffusers network (an unconditional UNet, or a class-conditional
DiT) and its scheduler's noise table (optionally with a VQ or KL autoencoder) so that it is a
:class:`crs.protocols.Denoiser` like any other;
:class:`LatentData` shows a pixel dataset through such a model's encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from crs.models import sample_side
from crs.prompts import has_text_encoder

__all__ = [
    "LATENT_KEYS",
    "SUPPORTED_PIPELINES",
    "DiffusersDenoiser",
    "LatentData",
    "describe_pipeline",
    "model_space",
    "pipeline_parts",
    "pixel_features",
]


class DiffusersDenoiser(nn.Module):
    """A discrete-time diffusers model (DDPM-style UNet + scheduler, optionally a VAE) as a denoiser on sigma.

    The VE input ``x = x0 + sigma * eps`` becomes the VP input ``alpha x`` (``alpha = 1/sqrt(1+sigma^2)``);
    the timestep is continuous, by interpolating ``log sigma`` in the scheduler's table of training
    sigmas ``sqrt((1 - alphas_cumprod) / alphas_cumprod)`` (as k-diffusion does for such models); the
    output is turned into an x0-prediction according to ``prediction_type`` (``epsilon``,
    ``v_prediction`` or ``sample``). The noise range is the table's.

    A class-conditional DiT (``DiTTransformer2DModel``, e.g. ``facebook/DiT-XL-2-256``) is a conditional denoiser
    (:attr:`conditioning`: its ``num_embeds_ada_norm`` classes, the null label after them, as ``DiTPipeline``'s
    ``class_null``); its learned-variance channels are dropped, as the pipeline does.

    A text-conditional UNet (``UNet2DConditionModel`` without added conditioning, Stable Diffusion 1.x / 2.x style)
    denoises with prompt embeddings given once by :meth:`set_prompts` (the text encoder's output, computed where it
    runs): its condition is a prompt's index in that table, the empty prompt's embedding its null (unconditional)
    branch.

    A flow-matching transformer (``flow``: Stable Diffusion 3's ``SD3Transformer2DModel``, Flux's
    ``FluxTransformer2DModel``) predicts the velocity at flow time ``s = sigma / (1 + sigma)`` from ``(1 - s) x``
    (:mod:`crs.flow`), with prompt and pooled embeddings; a Flux transformer takes its latents packed in 2 x 2
    patches with their positions, has no fixed size (:meth:`set_side`; the pipeline's default 1024 px until the data
    say otherwise) and, when guidance-distilled (``guidance_embeds``), the embedded guidance
    :attr:`embedded_guidance` (FluxPipeline's ``guidance_scale``, 3.5 by default) as an input; classifier-free
    guidance (:class:`crs.conditioning.Guided`) is FluxPipeline's ``true_cfg_scale`` on top of it.

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

    def __init__(
        self,
        unet: nn.Module,
        alphas_cumprod,
        prediction_type: str = "epsilon",
        vae: nn.Module | None = None,
        flow: tuple[float, int] | None = None,
    ):
        super().__init__()
        if prediction_type not in self.PREDICTIONS:
            raise ValueError(
                f"Unsupported prediction type {prediction_type!r}; supported: {', '.join(self.PREDICTIONS)}."
            )
        self.unet, self.prediction_type, self.vae = unet, prediction_type, vae
        self.is_flow = flow is not None
        if self.is_flow:  # a flow-matching network: flow times from the scheduler's smallest one to S_MAX
            from crs.flow import S_MAX, flow_to_sigma

            s_min, self.num_train_timesteps = float(flow[0]), int(flow[1])
            self.sigma_min, self.sigma_max = flow_to_sigma(s_min), flow_to_sigma(S_MAX)
        else:
            ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
            self.register_buffer("log_sigmas", torch.log(torch.sqrt((1 - ac) / ac)), persistent=False)
            self.sigma_min, self.sigma_max = float(self.log_sigmas.min().exp()), float(self.log_sigmas.max().exp())
        self.is_dit = type(unet).__name__ == "DiTTransformer2DModel"
        self.is_text = type(unet).__name__ in TEXT_NETWORKS
        self.is_packed = type(unet).__name__ in PACKED_NETWORKS  # Flux: 2 x 2 patches of latents, any even side
        self.side = FLUX_DEFAULT_SIDE if self.is_packed else None
        guided = getattr(getattr(unet, "config", None), "guidance_embeds", False)
        self.embedded_guidance = 3.5 if guided else None  # FluxPipeline's default guidance_scale
        self.prompt_table = self.pooled_table = None
        self.prompt_texts = None  # the prompts behind the table, when known (crs.prompts)

    def set_prompts(
        self,
        prompt_embeds: torch.Tensor,
        null_embeds: torch.Tensor,
        pooled: torch.Tensor | None = None,
        null_pooled: torch.Tensor | None = None,
    ) -> DiffusersDenoiser:
        """Give a text-conditional network its prompts: ``prompt_embeds`` (P, L, D), the text encoder's output for P
        prompts, and ``null_embeds`` (L, D) or (1, L, D), the empty prompt's (the unconditional branch); an SD3
        transformer also takes the pooled embeddings ``pooled`` (P, Dp) and ``null_pooled`` (Dp,) or (1, Dp).
        Condition ``i`` is then prompt ``i``, condition ``P`` the empty prompt. Returns the denoiser."""
        if not self.is_text:
            raise ValueError(f"Only a text-conditional network ({', '.join(TEXT_NETWORKS)}) takes prompt embeddings.")
        prompt_embeds, null_embeds = torch.as_tensor(prompt_embeds), torch.as_tensor(null_embeds)
        null_embeds = null_embeds.reshape(1, *null_embeds.shape[-2:])
        cfg = self.unet.config
        dim = cfg.get("cross_attention_dim") or cfg.get("joint_attention_dim")
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[1:] != null_embeds.shape[1:] or prompt_embeds.shape[2] != dim:
            raise ValueError(
                f"Prompt embeddings must be (P, L, {dim}) with a null embedding (L, {dim}) of the same L; got "
                f"{tuple(prompt_embeds.shape)} and {tuple(null_embeds.shape)}."
            )
        param = next(self.unet.parameters())
        pooled_dim = cfg.get("pooled_projection_dim")
        if pooled_dim is not None:
            if pooled is None or null_pooled is None:
                raise ValueError(
                    f"This {type(self.unet).__name__} also takes pooled prompt embeddings (P, {pooled_dim}) and the "
                    "empty prompt's: give `pooled` and `null_pooled` (the pipeline's encode_prompt returns them)."
                )
            pooled, null_pooled = torch.as_tensor(pooled), torch.as_tensor(null_pooled).reshape(1, -1)
            if pooled.shape != (len(prompt_embeds), pooled_dim) or null_pooled.shape != (1, pooled_dim):
                raise ValueError(
                    f"Pooled embeddings must be ({len(prompt_embeds)}, {pooled_dim}) and ({pooled_dim},); got "
                    f"{tuple(pooled.shape)} and {tuple(null_pooled.shape)}."
                )
            self.pooled_table = torch.cat([pooled, null_pooled]).to(param.device, param.dtype)
        self.prompt_table = torch.cat([prompt_embeds, null_embeds]).to(param.device, param.dtype)
        return self

    @property
    def prompt_digest(self) -> str | None:
        """A short SHA-256 digest of the prompt table (None before :meth:`set_prompts`): what a condition source
        records, so that results for other prompts are not taken for these."""
        if self.prompt_table is None:
            return None
        import hashlib

        digest = hashlib.sha256(self.prompt_table.detach().float().cpu().numpy().tobytes())
        if self.pooled_table is not None:
            digest.update(self.pooled_table.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    @property
    def conditioning(self):
        """A DiT's classes, or a text UNet's prompts (:class:`crs.conditioning.Conditioning`, the null after them);
        None for an unconditional UNet. ValueError for a text UNet not yet given its prompts (:meth:`set_prompts`)."""
        from crs.conditioning import Conditioning

        if self.is_dit:
            classes = int(self.unet.config.num_embeds_ada_norm)
            return Conditioning("labels", classes, classes)
        if self.is_text:
            if self.prompt_table is None:
                raise ValueError(
                    "This text-conditional UNet has no prompts yet: give it prompt embeddings with "
                    "den.set_prompts(prompt_embeds, null_embeds) (the text encoder's output)."
                )
            prompts = len(self.prompt_table) - 1
            return Conditioning("prompts", prompts, prompts)
        return None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample the UNet denoises (latent shape for latent models)."""
        cfg = self.unet.config
        if self.is_packed:
            return (cfg.in_channels // 4, self.side, self.side)
        size = sample_side(cfg.sample_size)
        return (cfg.in_channels, size, size)

    def set_side(self, side: int) -> DiffusersDenoiser:
        """A Flux transformer's latent side (even: it packs 2 x 2 patches; pixels = side x the VAE's factor), which
        the network does not fix. ValueError for a network of fixed size or an odd side. Returns the denoiser."""
        if not self.is_packed:
            raise ValueError(f"A {type(self.unet).__name__} has a fixed size ({self.shape[1]}); only Flux's is set.")
        if not isinstance(side, int) or side < 2 or side % 2:
            raise ValueError(f"A Flux transformer's latent side must be an even integer >= 2, got {side!r}.")
        self.side = side
        return self

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

    def forward(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) VE, sigma scalar or (B,) -> x0-prediction, same dtype and device as ``x``; a DiT takes
        class labels ``cond`` (B,), a text UNet prompt indices (:meth:`set_prompts`); None or the null label: the
        unconditional branch.

        The model runs on its own device: inputs from anywhere are moved there and the result back.
        """
        param = next(self.unet.parameters())
        s = torch.as_tensor(sigma, dtype=torch.float64).to(param.device).reshape(-1).expand(x.shape[0])
        if self.is_flow:
            return self._flow_forward(x, s, cond, param)
        t = self.sigma_to_t(s)
        sb = s.reshape(-1, 1, 1, 1).to(param.dtype)
        alpha = 1.0 / torch.sqrt(1.0 + sb**2)
        x_vp = alpha * x.to(param.device, param.dtype)
        if self.is_dit or self.is_text:
            labels = self.conditioning.labels(cond, x.shape[0], param.device)
            if self.is_dit:
                out = self.unet(x_vp, timestep=t.to(param.dtype), class_labels=labels).sample
                out = out[:, : x.shape[1]].to(param.dtype)  # learned variance: DiTPipeline keeps the first channels
            else:
                context = self.prompt_table[labels]
                out = self.unet(x_vp, t.to(param.dtype), encoder_hidden_states=context).sample.to(param.dtype)
        elif cond is not None:
            raise ValueError("This model is unconditional: it takes no class labels.")
        else:
            out = self.unet(x_vp, t.to(param.dtype)).sample.to(param.dtype)
        if self.prediction_type == "epsilon":
            x0 = (x_vp - alpha * sb * out) / alpha
        elif self.prediction_type == "v_prediction":
            x0 = alpha * x_vp - alpha * sb * out
        else:
            x0 = out
        return x0.to(x.device, x.dtype)

    def _flow_forward(self, x: torch.Tensor, sigma: torch.Tensor, cond, param) -> torch.Tensor:
        """A flow-matching transformer (SD3): input ``(1 - s) x`` at timestep ``s * T``, velocity out, ``x0 = x_s -
        s v`` (:mod:`crs.flow`), with the prompts' embeddings and pooled embeddings."""
        from crs.flow import flow_denoise

        labels = self.conditioning.labels(cond, x.shape[0], param.device)
        if self.is_packed:
            if tuple(x.shape[1:]) != tuple(self.shape):
                raise ValueError(
                    f"This Flux denoiser is set to samples of shape {tuple(self.shape)}, got {tuple(x.shape[1:])}: "
                    "set its size with den.set_side(latent_side)."
                )
            return flow_denoise(self._flux_velocity(labels, param), x.to(param.device, param.dtype), sigma).to(
                x.device, x.dtype
            )

        def velocity(x_s, s):
            return self.unet(
                hidden_states=x_s,
                timestep=(s * self.num_train_timesteps).to(param.dtype),
                encoder_hidden_states=self.prompt_table[labels],
                pooled_projections=self.pooled_table[labels],
            ).sample

        return flow_denoise(velocity, x.to(param.device, param.dtype), sigma).to(x.device, x.dtype)

    def _flux_velocity(self, labels: torch.Tensor, param):
        """Flux's velocity as a function of the unpacked ``(x_s, s)``: latents packed in 2 x 2 patches with their
        positions (``img_ids``), the prompts' positions (``txt_ids``, zeros), flow time ``s`` itself as the timestep
        and the embedded guidance, as ``FluxPipeline`` calls it; the output unpacked."""
        b, c, h, w = (len(labels), *self.shape)
        rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(param.device, param.dtype)
        context, pooled = self.prompt_table[labels], self.pooled_table[labels]
        txt_ids = torch.zeros(context.shape[1], 3, device=param.device, dtype=param.dtype)
        guidance = None
        if self.embedded_guidance is not None:
            guidance = torch.full((b,), float(self.embedded_guidance), device=param.device, dtype=torch.float32)

        def velocity(x_s, s):
            packed = x_s.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4)
            v = self.unet(
                hidden_states=packed,
                timestep=s.to(param.dtype),
                guidance=guidance,
                pooled_projections=pooled,
                encoder_hidden_states=context,
                txt_ids=txt_ids,
                img_ids=img_ids,
            ).sample
            return v.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

        return velocity

    @classmethod
    def from_pipeline_folder(cls, folder) -> DiffusersDenoiser:
        """Load ``unet``, ``scheduler`` and, for latent models, ``vqvae`` / ``vae`` from a saved pipeline folder.

        Raises:
            ValueError: a network other than an unconditional UNet2DModel or a class-conditional DiT, a scheduler
                without a discrete noise table, or a pipeline without a network and a scheduler (naming what is
                there and what is supported).
        """
        import diffusers

        folder = Path(folder)
        parts, net_key = pipeline_parts(folder)
        net_name, sched_name, supported = parts[net_key], parts["scheduler"], SUPPORTED_PIPELINES
        unet = getattr(diffusers, net_name).from_pretrained(folder / net_key).eval()
        scheduler = getattr(diffusers, sched_name).from_pretrained(folder / "scheduler")
        vae_key = next((k for k in LATENT_KEYS if k in parts), None)
        if net_name in FLOW_NETWORKS:
            from crs.export import is_flow_scheduler

            if not is_flow_scheduler(scheduler):
                raise ValueError(f"A {net_name} needs a flow-matching scheduler; this pipeline has {sched_name}.")
            vae = getattr(diffusers, parts[vae_key]).from_pretrained(folder / vae_key).eval() if vae_key else None
            flow = (float(scheduler.sigma_min), int(scheduler.config.num_train_timesteps))
            den = cls(unet, None, "epsilon", vae, flow=flow)
            if den.is_packed:  # no fixed size: the images the VAE was made for (Flux: 1024 px), until data say
                den.side = packed_side(json.loads((folder / vae_key / "config.json").read_text()) if vae_key else {})
            return den
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(
                f"Unsupported scheduler {sched_name} (no discrete noise table `alphas_cumprod`); supported: "
                f"{supported}."
            )
        vae = getattr(diffusers, parts[vae_key]).from_pretrained(folder / vae_key).eval() if vae_key else None
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
# networks conditioned on prompt embeddings
TEXT_NETWORKS = ("UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel")
FLOW_NETWORKS = ("SD3Transformer2DModel", "FluxTransformer2DModel")  # flow-matching networks (crs.flow)
PACKED_NETWORKS = ("FluxTransformer2DModel",)  # latents packed in 2 x 2 patches, no fixed size
FLUX_DEFAULT_SIDE = 128  # FluxPipeline's default_sample_size: 1024 px through its 8x VAE


SUPPORTED_PIPELINES = (
    "pipelines with a discrete-time scheduler (DDPM, DDIM, PNDM, ...) and an unconditional UNet2DModel (DDPM, LDM), "
    "a class-conditional DiTTransformer2DModel (DiT) or a text-conditional UNet2DConditionModel without added "
    "conditioning (Stable Diffusion 1.x / 2.x; prompt embeddings given with set_prompts); and flow-matching "
    "pipelines (FlowMatchEulerDiscreteScheduler) with an SD3Transformer2DModel (Stable Diffusion 3) or a "
    "FluxTransformer2DModel (Flux)"
)


def packed_side(vae_config: dict) -> int:
    """A Flux transformer's default latent side: that of the images its VAE was made for (the VAE config's
    ``sample_size``, 1024 px for Flux's), else :data:`FLUX_DEFAULT_SIDE` (``FluxPipeline``'s default), even."""
    size, levels = vae_config.get("sample_size"), len(vae_config.get("block_out_channels") or [0])
    if not isinstance(size, int):
        return FLUX_DEFAULT_SIDE
    return max(2, size // 2 ** (levels - 1) // 2 * 2)


def pipeline_parts(folder) -> tuple[dict[str, str], str]:
    """A saved pipeline's parts from its ``model_index.json`` alone (no weights read): ``({part: class name},
    network key)``, the network key ``unet`` or ``transformer``.

    Raises:
        ValueError: no network or no scheduler, or a network this adapter does not support (naming what is there
            and what is supported): the check :meth:`DiffusersDenoiser.from_pipeline_folder` and the batch runner's
            preflight share.
    """
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    parts = {k: v[1] for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[1]}
    net_key = next((k for k in ("unet", "transformer") if k in parts), None)
    if net_key is None or "scheduler" not in parts:
        missing = [w for w, ok in (("unet or transformer", net_key), ("scheduler", "scheduler" in parts)) if not ok]
        raise ValueError(
            f"The pipeline at {str(folder)!r} has no {' and no '.join(missing)} (it has: "
            f"{', '.join(sorted(parts))}); supported: {SUPPORTED_PIPELINES}."
        )
    net_name = parts[net_key]
    extra = {  # parts that steer the network with more than a class or a prompt: refused, not silently dropped
        "controlnet": "a ControlNet",
        "adapter": "a T2I-Adapter",
        "image_encoder": "an image encoder (IP-Adapter or image variation)",
        "prior": "a prior",
    }
    steering = [f"{what} ({k}: {parts[k]})" for k, what in extra.items() if k in parts]
    if steering:
        raise ValueError(
            f"The pipeline at {str(folder)!r} has {', '.join(steering)}, not supported; supported: "
            f"{SUPPORTED_PIPELINES}."
        )
    if net_name == "UNet2DConditionModel":
        if not (folder / net_key / "config.json").is_file():
            raise ValueError(f"The pipeline at {str(folder)!r} names a {net_key} but has no {net_key}/config.json.")
        added = json.loads((folder / net_key / "config.json").read_text()).get("addition_embed_type")
        if added is not None:
            raise ValueError(
                f"The pipeline at {str(folder)!r} has a UNet2DConditionModel with added conditioning "
                f"({added!r}: SDXL style, pooled text embeddings and time ids), not supported yet; supported: "
                f"{SUPPORTED_PIPELINES}."
            )
    elif net_name in PACKED_NETWORKS:  # Flux: its latents and nothing else (Fill, Depth, Canny add channels)
        cfg = json.loads((folder / net_key / "config.json").read_text()) if (folder / net_key).is_dir() else {}
        vae_key = next((k for k in LATENT_KEYS if k in parts), None)
        vae = json.loads((folder / vae_key / "config.json").read_text()) if vae_key else {}
        latent = vae.get("latent_channels")
        if cfg and latent and cfg.get("in_channels") != 4 * latent:
            raise ValueError(
                f"The pipeline at {str(folder)!r} has a {net_name} taking {cfg.get('in_channels')} input channels, "
                f"not its {latent} latent channels packed (4 x {latent}): a Flux variant conditioned on images "
                f"(Fill, Depth, Canny), not supported; supported: {SUPPORTED_PIPELINES}."
            )
    elif net_name not in ("UNet2DModel", "DiTTransformer2DModel", *FLOW_NETWORKS):
        raise ValueError(
            f"The pipeline at {str(folder)!r} has a {net_name} (not supported); supported: {SUPPORTED_PIPELINES}."
        )
    return parts, net_key


def describe_pipeline(folder) -> dict:
    """What a saved pipeline is, from its JSON files alone (no weights read): ``{"network", "shape",
    "pixel_shape", "num_classes", "text", "text_encoder", "side_multiple"}`` (``num_classes`` None for a network
    without classes; ``text``: a text-conditional UNet, which takes prompts; ``text_encoder``: the pipeline has a
    tokenizer and a text encoder to embed them with; ``side_multiple``: for a network of no fixed size (Flux), what
    the image side must be a multiple of, the shapes then its default size's; else None). ValueError as
    :func:`pipeline_parts`."""
    folder = Path(folder)
    parts, net_key = pipeline_parts(folder)
    cfg = json.loads((folder / net_key / "config.json").read_text())
    packed = parts[net_key] in PACKED_NETWORKS
    vae_key = next((k for k in LATENT_KEYS if k in parts), None)
    vae = json.loads((folder / vae_key / "config.json").read_text()) if vae_key else {}
    size = packed_side(vae) if packed else sample_side(cfg["sample_size"])
    shape = (cfg["in_channels"] // 4 if packed else cfg["in_channels"], size, size)
    pixel_shape, factor = shape, 1
    if vae_key is not None:
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        pixel_shape = (vae["in_channels"], size * factor, size * factor)
    classes = cfg.get("num_embeds_ada_norm") if parts[net_key] == "DiTTransformer2DModel" else None
    text = parts[net_key] in TEXT_NETWORKS
    return {
        "network": parts[net_key],
        "shape": shape,
        "pixel_shape": pixel_shape,
        "num_classes": classes,
        "text": text,
        # a prompt list is embedded by the pipeline's own text encoders (SD3's three, Flux's two: encode_prompt)
        "text_encoder": text and has_text_encoder(folder),
        "side_multiple": 2 * factor if packed else None,
    }


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

    @property
    def num_classes(self) -> int | None:
        """The image dataset's classes (None: unlabelled)."""
        return getattr(self.data, "num_classes", None)

    def label_shares(self) -> torch.Tensor:
        return self.data.label_shares()

    def sample_labeled(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`sample`, with the images' labels: ``(latents, labels (n,))``."""
        images, labels = self.data.sample_labeled(n, generator)
        return self.denoiser.encode(images, self.batch_size).cpu(), labels


def model_space(data, denoiser):
    """The data in the space the denoiser works in: :class:`LatentData` for latent models, else ``data`` (also data
    already in the model's space: a model's own samples, :class:`crs.model_data.ModelSamples`)."""
    if getattr(data, "in_model_space", False):
        return data
    return LatentData(data, denoiser) if denoiser.is_latent else data


def pixel_features(feature_fn, denoiser):
    """Features of model-space samples: ``feature_fn(decode(z))`` for latent models, else ``feature_fn``.

    The ``fid`` measure of a latent model compares images: the noised (VP-scaled) latents are decoded
    first, without a VQ model's quantiser (which would snap the noise back onto its codebook).
    """
    if not denoiser.is_latent or feature_fn is None:
        return feature_fn
    return lambda z: feature_fn(denoiser.decode(z, quantize=False))
