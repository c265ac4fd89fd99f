"""Prompts of text-conditional models: the text encoder's embeddings of a prompt list (docs/method.md, section 10).

A text-conditional denoiser (:class:`crs.adapters.DiffusersDenoiser` on a ``UNet2DConditionModel``) is conditioned
on a *table* of prompt embeddings, and its condition is a prompt's index in the table (:meth:`set_prompts`), so
prompts are drawn, bound and guided exactly as class labels are. The table comes from

- the pipeline's own text encoder and tokenizer (:func:`encode_prompts`), computed as ``StableDiffusionPipeline``'s
  ``encode_prompt`` does (padded to the tokenizer's length, the last hidden state, the empty prompt's embedding as
  the unconditional branch): a list of prompts is all a params file gives; or
- a file written by :meth:`PromptTable.save` (embeddings made elsewhere: a pipeline without its text encoder, or
  another encoder), given by its path.

:func:`prompt_table` chooses between the two from the stages' ``prompts`` parameter.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["PromptTable", "check_prompts", "encode_prompts", "has_text_encoder", "prompt_table"]

TEXT_PARTS = ("tokenizer", "text_encoder")


@dataclass
class PromptTable:
    """Prompt embeddings for a text-conditional model.

    Attributes:
        embeds: (P, L, D) float32, the text encoder's output for P prompts.
        null: (1, L, D), the empty prompt's (the unconditional branch of classifier-free guidance).
        texts: the P prompts, when known.
        pooled, null_pooled: (P, Dp) and (1, Dp), the pooled embeddings an SD3 transformer also takes (None for
            a Stable Diffusion 1.x / 2.x UNet).
    """

    embeds: torch.Tensor
    null: torch.Tensor
    texts: list[str] | None = field(default=None)
    pooled: torch.Tensor | None = field(default=None)
    null_pooled: torch.Tensor | None = field(default=None)

    def __post_init__(self):
        self.embeds = torch.as_tensor(self.embeds).detach().float().cpu()
        self.null = torch.as_tensor(self.null).detach().float().cpu()
        self.null = self.null.reshape(1, *self.null.shape[-2:]) if self.null.ndim >= 2 else self.null
        if self.embeds.ndim != 3 or len(self.embeds) == 0 or self.null.shape != (1, *self.embeds.shape[1:]):
            raise ValueError(
                "Prompt embeddings must be (P, L, D) with P >= 1 and an empty prompt's embedding (L, D) of the same "
                f"L and D; got {tuple(self.embeds.shape)} and {tuple(self.null.shape)}."
            )
        if not (torch.isfinite(self.embeds).all() and torch.isfinite(self.null).all()):
            raise ValueError("Prompt embeddings hold NaN or inf.")
        if self.texts is not None and len(self.texts) != len(self.embeds):
            raise ValueError(f"{len(self.texts)} prompt texts for {len(self.embeds)} embeddings.")
        if (self.pooled is None) != (self.null_pooled is None):
            raise ValueError("Give both `pooled` and `null_pooled` (the empty prompt's), or neither.")
        if self.pooled is not None:
            self.pooled = torch.as_tensor(self.pooled).detach().float().cpu()
            self.null_pooled = torch.as_tensor(self.null_pooled).detach().float().cpu().reshape(1, -1)
            if self.pooled.shape != (len(self.embeds), self.null_pooled.shape[1]):
                raise ValueError(
                    f"Pooled embeddings must be (P, Dp) with P = {len(self.embeds)} and the empty prompt's (Dp,); got "
                    f"{tuple(self.pooled.shape)} and {tuple(self.null_pooled.shape)}."
                )

    def __len__(self) -> int:
        return len(self.embeds)

    def save(self, path) -> Path:
        """Write the table to ``path`` (``torch.save`` of ``{"prompt_embeds", "null_embeds", "prompts"}``),
        atomically."""
        from crs.io import atomic_write_bytes

        buf = io.BytesIO()
        doc = {"prompt_embeds": self.embeds, "null_embeds": self.null, "prompts": self.texts}
        if self.pooled is not None:
            doc.update(pooled_embeds=self.pooled, null_pooled_embeds=self.null_pooled)
        torch.save(doc, buf)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> PromptTable:
        """A table written by :meth:`save` (or any ``torch.save`` of a dict with ``prompt_embeds`` (P, L, D) and
        ``null_embeds`` (L, D); ``prompts`` optional; ``pooled_embeds`` (P, Dp) and ``null_pooled_embeds`` (Dp,) for
        SD3). FileNotFoundError / ValueError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No prompt embeddings file at {str(path)!r}.")
        try:
            doc = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
            raise ValueError(f"{str(path)!r} is not a prompt embeddings file (torch.save of a dict): {exc}") from exc
        missing = [k for k in ("prompt_embeds", "null_embeds") if not isinstance(doc, dict) or k not in doc]
        if missing:
            raise ValueError(f"The prompt embeddings file {str(path)!r} lacks {', '.join(missing)}.")
        try:
            return cls(
                doc["prompt_embeds"],
                doc["null_embeds"],
                doc.get("prompts"),
                doc.get("pooled_embeds"),
                doc.get("null_pooled_embeds"),
            )
        except ValueError as exc:
            raise ValueError(f"{str(path)!r}: {exc}") from exc


def check_prompts(prompts) -> None:
    """ValueError unless ``prompts`` is a stage's ``prompts`` value: None (no text model), a non-empty list of
    prompts (strings; encoded with the pipeline's text encoder) or the path of an embeddings file (a string)."""
    if prompts is None or (isinstance(prompts, str) and prompts):
        return
    if not isinstance(prompts, (list, tuple)) or not prompts or any(not isinstance(p, str) for p in prompts):
        raise ValueError(
            "`prompts` must be a non-empty list of prompts (strings), the path of a prompt embeddings file, or None; "
            f"got {prompts!r}."
        )


def text_parts(index: dict) -> tuple[str, ...]:
    """The tokenizers and text encoders a pipeline's layout has (its ``model_index.json`` as a dict): one pair
    (Stable Diffusion 1.x / 2.x), two (Flux: CLIP and T5) or three (Stable Diffusion 3)."""
    pairs = 3 if "text_encoder_3" in index else 2 if "text_encoder_2" in index else 1
    return tuple(f"{k}{'' if i == 1 else f'_{i}'}" for i in range(1, pairs + 1) for k in TEXT_PARTS)


def has_text_encoder(folder) -> bool:
    """Whether a saved pipeline holds every tokenizer and text encoder of its layout (:func:`text_parts`: its
    ``model_index.json`` names them all)."""
    index = json.loads((Path(folder) / "model_index.json").read_text())
    return all(isinstance(index.get(k), list) and index[k][-1] for k in text_parts(index))


@torch.no_grad()
def encode_prompts(folder, prompts, device: str = "cpu", batch_size: int = 32) -> PromptTable:
    """Embed ``prompts`` with a saved pipeline's own tokenizer and text encoder, as ``StableDiffusionPipeline``'s
    ``encode_prompt`` does (no clip skip): tokens padded and truncated to the tokenizer's ``model_max_length``, the
    encoder's last hidden state; the empty prompt's embedding is the unconditional branch. A pipeline with several
    text encoders (Stable Diffusion 3: two CLIP and a T5; Flux: CLIP and T5) embeds them with its own
    ``encode_prompt`` (its default sequence lengths), which also gives the pooled embeddings.

    Raises:
        ValueError: the pipeline has no text encoder or tokenizer (give an embeddings file instead, naming how to
            write one), or ``transformers``, which they need, is not installed.
    """
    check_prompts(list(prompts))
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    if not has_text_encoder(folder):
        raise ValueError(
            f"The pipeline at {str(folder)!r} has no text encoder and tokenizer to embed prompts with (it needs "
            f"{', '.join(text_parts(index))}): give `prompts` as the path of an embeddings file "
            "(crs.prompts.PromptTable(embeds, null).save(path))."
        )
    if len(text_parts(index)) > 2:  # SD3, Flux: the pipeline's own encode_prompt, every encoder
        return _encode_with_pipeline(folder, index, [str(p) for p in prompts], device, batch_size)
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ValueError("Embedding prompts needs `transformers` (pip install transformers).") from exc

    index = json.loads((folder / "model_index.json").read_text())
    tokenizer = getattr(transformers, index["tokenizer"][1]).from_pretrained(folder / "tokenizer")
    encoder = getattr(transformers, index["text_encoder"][1]).from_pretrained(folder / "text_encoder").eval()
    encoder = encoder.to(device)
    use_mask = bool(getattr(encoder.config, "use_attention_mask", False))

    def embed(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = tokenizer(
                texts[i : i + batch_size],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            mask = tokens.attention_mask.to(device) if use_mask else None
            out.append(encoder(tokens.input_ids.to(device), attention_mask=mask)[0].float().cpu())
        return torch.cat(out)

    texts = [str(p) for p in prompts]
    return PromptTable(embed(texts), embed([""]), texts)


def _encode_with_pipeline(folder: Path, index: dict, texts: list[str], device, batch_size: int) -> PromptTable:
    """SD3's and Flux's prompts through the pipeline's own ``encode_prompt`` (its text encoders loaded, not its
    transformer or VAE): embeddings and pooled embeddings of ``texts`` and of the empty prompt."""
    import diffusers

    name = index.get("_class_name", "")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "encode_prompt"):
        raise ValueError(f"The pipeline at {str(folder)!r} ({name}) has no encode_prompt to embed prompts with.")
    pipe = cls.from_pretrained(folder, transformer=None, vae=None).to(device)
    sd3 = "text_encoder_3" in index

    def embed(chunk: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if sd3:
            e, _, pooled, _ = pipe.encode_prompt(
                prompt=chunk, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=False
            )
        else:
            e, pooled, _ = pipe.encode_prompt(prompt=chunk, prompt_2=None, device=device)
        return e.float().cpu(), pooled.float().cpu()

    parts = [embed(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    null, null_pooled = embed([""])
    return PromptTable(
        torch.cat([e for e, _ in parts]),
        null,
        texts,
        pooled=torch.cat([p for _, p in parts]),
        null_pooled=null_pooled,
    )


def prompt_table(folder, prompts, device: str = "cpu") -> PromptTable:
    """The table of a stage's ``prompts`` for the pipeline at ``folder``: a list is embedded with the pipeline's own
    text encoder (:func:`encode_prompts`), a path is read (:meth:`PromptTable.load`; relative to the working
    folder, as the stages' other paths)."""
    check_prompts(prompts)
    if prompts is None:
        raise ValueError("No `prompts` given.")
    if isinstance(prompts, str):
        return PromptTable.load(prompts)
    return encode_prompts(folder, prompts, device)
