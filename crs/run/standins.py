"""Stand-ins for what only a GPU machine with network has: tiny diffusers pipelines (and, in
:func:`crs.run.experiment.dry_run`, digits for image folders), so a dry run and the tests work offline.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from crs.io import plain_modes

__all__ = ["KNOWN_PIPELINES", "TINY_KINDS", "build_tiny_pipeline", "tiny_flow_text_encoders", "tiny_text_encoder"]


TINY_KINDS = ("ddpm", "ldm", "dit", "sd", "sd3", "flux")

# Hub pipelines the GPU experiments use: kind and image shape, so that a dry run can stand in for them.
KNOWN_PIPELINES = {
    "google/ddpm-cifar10-32": ("ddpm", (3, 32, 32)),
    "google/ddpm-church-256": ("ddpm", (3, 256, 256)),
    "google/ddpm-bedroom-256": ("ddpm", (3, 256, 256)),
    "CompVis/ldm-celebahq-256": ("ldm", (3, 256, 256)),
    "facebook/DiT-XL-2-256": ("dit", (3, 256, 256), {"latent_factor": 8}),  # 32 x 32 latents, as DiT's
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ("sd", (3, 512, 512), {"latent_factor": 8}),  # 64 x 64 latents
    "stabilityai/stable-diffusion-3-medium-diffusers": ("sd3", (3, 1024, 1024), {"latent_factor": 8}),
    "black-forest-labs/FLUX.1-dev": ("flux", (3, 1024, 1024), {"latent_factor": 8}),  # 128 x 128 latents, packed
}


def build_tiny_pipeline(
    folder,
    kind: str = "ddpm",
    shape: tuple[int, int, int] = (3, 32, 32),
    prediction_type: str = "epsilon",
    channels: tuple[int, ...] = (8, 16),
    seed: int = 0,
    latent_factor: int = 2,
) -> Path:
    """Save a randomly initialised, tiny diffusers pipeline of a given kind into ``folder``.

    Stand-ins for hub models where there is no network (the tests, and the dry run of a GPU experiment):
    they load through exactly the path a downloaded pipeline takes.

    Args:
        kind: ``ddpm`` (``DDPMPipeline``: UNet on pixels, linear betas), ``ldm`` (``LDMPipeline``:
            ``VQModel`` halving each side, UNet on its latents, ``DDIMScheduler`` with LDM's betas) or ``dit``
            (``DiTPipeline``: a class-conditional ``DiTTransformer2DModel`` over ImageNet's 1000 classes, as
            ``DiTPipeline`` assumes (its null label is 1000), with learned variance,
            on the latents of an ``AutoencoderKL`` halving each side, ``DDIMScheduler`` with DiT's linear betas) or
            ``sd`` (Stable Diffusion 1.x's layout: a text-conditional ``UNet2DConditionModel`` with cross-attention
            over 16-dimensional embeddings, ``AutoencoderKL`` latents, ``PNDMScheduler`` with scaled-linear betas;
            a tiny CLIP text encoder and tokenizer, :func:`tiny_text_encoder`) or ``sd3`` (Stable Diffusion 3's
            layout: an ``SD3Transformer2DModel`` over 16-dimensional prompt embeddings and 8-dimensional pooled ones,
            on ``AutoencoderKL`` latents with SD3's scaling and shift factors, ``FlowMatchEulerDiscreteScheduler``
            with SD3's shift 3; its three text encoders tiny, :func:`tiny_flow_text_encoders`) or ``flux``
            (Flux.1-dev's layout: a guidance-distilled ``FluxTransformer2DModel`` on packed ``AutoencoderKL`` latents of
            16 channels with Flux's scaling and shift factors, 16-dimensional prompt embeddings and 8-dimensional
            pooled ones, ``FlowMatchEulerDiscreteScheduler`` with Flux's dynamic shift; its CLIP and T5 text encoders
            tiny).
        shape: image shape (C, H, W).
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample``.
        channels: UNet (and VAE) widths per level.
        latent_factor: how much the latent kinds' autoencoder shrinks each side (a power of 2; Stable Diffusion's
            and DiT's: 8).
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMPipeline,
        DDPMScheduler,
        DiTPipeline,
        DiTTransformer2DModel,
        FlowMatchEulerDiscreteScheduler,
        LDMPipeline,
        PNDMScheduler,
        UNet2DConditionModel,
        UNet2DModel,
        VQModel,
    )

    if kind not in TINY_KINDS:
        raise ValueError(f"Unknown pipeline kind {kind!r}; valid choices: {', '.join(TINY_KINDS)}.")
    c, h, _ = shape
    with torch.random.fork_rng(devices=[]):  # diffusers initialises with the global generator: seed a fork of it
        torch.manual_seed(seed)

        def unet_for(ch: int, size: int) -> UNet2DModel:
            levels = len(channels)
            return UNet2DModel(
                sample_size=size,
                in_channels=ch,
                out_channels=ch,
                block_out_channels=tuple(channels),
                norm_num_groups=4,
                layers_per_block=1,
                down_block_types=("DownBlock2D",) * levels,
                up_block_types=("UpBlock2D",) * levels,
                add_attention=False,
            )

        # the autoencoders of the latent kinds: log2(latent_factor) + 1 levels (two by default: each side halved), no
        # attention over 128 x 128 positions
        levels = int(latent_factor).bit_length()
        if latent_factor < 2 or 2 ** (levels - 1) != latent_factor:
            raise ValueError(f"`latent_factor` must be a power of 2 >= 2, got {latent_factor!r}.")
        autoencoder = dict(
            in_channels=c,
            out_channels=c,
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=(channels[0],) * levels,
            norm_num_groups=4,
            sample_size=h,
            mid_block_add_attention=False,
        )
        if kind == "ddpm":
            pipe = DDPMPipeline(unet=unet_for(c, h), scheduler=DDPMScheduler(prediction_type=prediction_type))
        elif kind == "sd3":
            from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

            transformer = SD3Transformer2DModel(
                sample_size=h // latent_factor,
                patch_size=2,
                in_channels=4,
                out_channels=4,
                num_layers=1,
                attention_head_dim=8,
                num_attention_heads=2,
                joint_attention_dim=16,
                caption_projection_dim=16,
                pooled_projection_dim=8,
            )
            vae = AutoencoderKL(latent_channels=4, scaling_factor=1.5305, shift_factor=0.0609, **autoencoder)  # SD3's
            pipe = StableDiffusion3Pipeline(
                transformer=transformer,
                vae=vae,
                scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                **tiny_flow_text_encoders("sd3", seed),
            )
        elif kind == "flux":
            from diffusers import FluxPipeline, FluxTransformer2DModel

            transformer = FluxTransformer2DModel(
                patch_size=1,
                in_channels=16 * 4,  # 2 x 2 patches of 16 latent channels
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=8,
                num_attention_heads=2,
                joint_attention_dim=16,
                pooled_projection_dim=8,
                guidance_embeds=True,
                axes_dims_rope=(2, 2, 4),  # rotary dimensions of (text, row, column) positions: the head's 8
            )
            vae = AutoencoderKL(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, **autoencoder)
            scheduler = FlowMatchEulerDiscreteScheduler(  # Flux.1-dev's
                shift=3.0,
                use_dynamic_shifting=True,
                base_shift=0.5,
                max_shift=1.15,
                base_image_seq_len=256,
                max_image_seq_len=4096,
            )
            pipe = FluxPipeline(
                transformer=transformer, vae=vae, scheduler=scheduler, **tiny_flow_text_encoders("flux", seed)
            )
        elif kind in ("dit", "sd"):
            vae = AutoencoderKL(latent_channels=4, **autoencoder)
            if kind == "sd":
                # attention at the deepest level only, at most 16 x 16 positions (a 64 x 64 latent gets a third
                # level): self-attention over every latent position is what makes a UNet slow on a CPU
                side = h // latent_factor
                levels = max(len(channels), (max(side // 16, 1)).bit_length() + 1)
                widths = tuple(channels) + (channels[-1],) * (levels - len(channels))
                unet = UNet2DConditionModel(
                    sample_size=side,
                    in_channels=4,
                    out_channels=4,
                    layers_per_block=1,
                    block_out_channels=widths,
                    down_block_types=("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",),
                    up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
                    cross_attention_dim=16,
                    attention_head_dim=4,
                    norm_num_groups=4,
                )
                scheduler = PNDMScheduler(  # Stable Diffusion 1.5's
                    beta_schedule="scaled_linear",
                    beta_start=0.00085,
                    beta_end=0.012,
                    prediction_type=prediction_type,
                    steps_offset=1,
                    skip_prk_steps=True,
                )
                tokenizer, text_encoder = tiny_text_encoder(16, seed=seed)
                from diffusers import StableDiffusionPipeline

                pipe = StableDiffusionPipeline(
                    vae=vae,
                    text_encoder=text_encoder,
                    tokenizer=tokenizer,
                    unet=unet,
                    scheduler=scheduler,
                    safety_checker=None,
                    feature_extractor=None,
                    requires_safety_checker=False,
                )
                pipe.save_pretrained(folder)
                return plain_modes(folder)
            dit = DiTTransformer2DModel(
                num_attention_heads=2,
                attention_head_dim=8,
                in_channels=4,
                out_channels=8,  # learned variance, as DiT's
                num_layers=1,
                sample_size=h // latent_factor,
                patch_size=2,
                num_embeds_ada_norm=1000,
            )
            scheduler = DDIMScheduler(beta_schedule="linear", prediction_type=prediction_type, clip_sample=False)
            pipe = DiTPipeline(transformer=dit, vae=vae, scheduler=scheduler, id2label={i: str(i) for i in range(1000)})
        else:
            vq = VQModel(latent_channels=3, num_vq_embeddings=64, scaling_factor=1.0, **autoencoder)
            scheduler = DDIMScheduler(
                beta_schedule="scaled_linear",
                beta_start=0.0015,
                beta_end=0.0195,
                prediction_type=prediction_type,
                clip_sample=False,
            )
            pipe = LDMPipeline(vqvae=vq, unet=unet_for(3, h // latent_factor), scheduler=scheduler)
    pipe.save_pretrained(folder)
    return plain_modes(folder)  # safetensors writes private (0600) files


def tiny_flow_text_encoders(kind: str, seed: int = 0) -> dict:
    """Tiny text encoders of a flow pipeline's layout, built offline: for ``sd3`` two CLIP encoders with projections
    (8 features each, pooled projections of 4: together SD3's 16-dimensional context and 8-dimensional pooled
    embedding at this size) and a T5 encoder of 16 features; for ``flux`` one CLIP encoder of 8 features (its pooled
    output) and a T5 encoder of 16. The T5 encoders' tokenizer is the CLIP stand-in's (:func:`tiny_text_encoder`: no
    SentencePiece model is downloaded); the pipelines call it with the same arguments. ``{part: object}`` for the
    pipeline's constructor."""
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tokenizer, clip = tiny_text_encoder(8, seed=seed)
    parts = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=clip.config.vocab_size,
                d_model=16,
                d_kv=8,
                d_ff=32,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
            )
        ).eval()
        if kind == "sd3":
            config = clip.config.to_dict() | {"projection_dim": 4}
            config.pop("architectures", None)
            projected = [CLIPTextModelWithProjection(type(clip.config)(**config)).eval() for _ in range(2)]
            parts.update(text_encoder=projected[0], text_encoder_2=projected[1], text_encoder_3=t5)
            parts.update(tokenizer=tokenizer, tokenizer_2=tokenizer, tokenizer_3=tokenizer)
        else:
            parts.update(text_encoder=clip, tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer)
    return parts


def tiny_text_encoder(width: int = 16, length: int = 16, seed: int = 0):
    """A randomly initialised, tiny CLIP text encoder and its tokenizer, built offline: ``(CLIPTokenizer,
    CLIPTextModel)``. The tokenizer is CLIP's byte-level BPE with no merges (one token per byte, with CLIP's
    end-of-word forms), so no vocabulary file is downloaded; the encoder has one layer of ``width`` features over
    ``length`` tokens (Stable Diffusion 1.x: 768 over 77), initialised with ``seed`` (on a fork of the global
    generator)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: len(vocab) + i for i, c in enumerate(chars)})
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(chars)})
    with tempfile.TemporaryDirectory() as folder:  # the files a hub tokenizer has: any transformers version reads them
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=length)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CLIPTextModel(config).eval()
    return tokenizer, encoder
