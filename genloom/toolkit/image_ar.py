"""Raster-order autoregressive image modelling over VQ tokens (the LlamaGen setting).

Shared by the decoders of the parallel-decoding family that accelerate visual AR models (LANTERN,
LANTERN++, grouped speculative decoding): they need an image AR target, a smaller draft of the
same vocabulary, and the latent space of the image tokens. The config fields are
:class:`genloom.toolkit.image_ar_config.RasterVQConfig` and
:class:`~genloom.toolkit.image_ar_config.RasterNextTokenConfig`.

- :class:`RasterVQTokenizer` wraps a single-scale VQ tokenizer built through the registry (by
  default VAR's ``var-vq`` with one scale, i.e. a VQ-VAE): an image becomes its ``h * w`` code ids
  in raster order (row by row). The vocabulary is the codebook (ids ``0 .. V - 1``) followed by one
  start token per class (``V + c``), so a class-conditional image is the sequence
  ``[V + c, z_1, ..., z_{hw}]`` and generation is plain next-token decoding from the prompt
  ``[V + c]`` with any decoder. :meth:`RasterVQTokenizer.token_latents` gives every token's latent
  vector (a codebook row; NaN for the class tokens, which have none).
- :class:`RasterNextToken` is the objective: teacher-forced next-token cross-entropy on the image
  tokens of ``[class token, raster ids]`` under the causal pattern.
- :func:`token_latents` finds a model's token latents (its tokenizer's, else its input
  embeddings) and :func:`latent_neighbours` the ``k`` nearest tokens of each token in that space,
  the neighbourhoods that relaxed acceptance (:class:`genloom.toolkit.acceptance.RelaxedAcceptance`)
  aggregates over.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core.model import Objective, Tokenizer
from genloom.core.pattern import CAUSAL
from genloom.toolkit.image_ar_config import RasterNextTokenConfig, RasterVQConfig

__all__ = ["RasterVQConfig", "RasterNextTokenConfig", "RasterVQTokenizer", "RasterNextToken", "token_latents", "latent_neighbours"]


class RasterVQTokenizer(nn.Module, Tokenizer):
    """Images <-> ``[class token] + raster-order VQ ids`` (module docstring).

    ``quantizer`` is a single-scale VQ tokenizer: ``encode(images)`` gives a list holding one
    (B, h * w) id tensor, ``decode_ids([ids])`` gives images, ``codebook`` is an ``nn.Embedding``.
    """

    def __init__(self, quantizer, num_classes: int):
        super().__init__()
        self.quantizer = quantizer
        self.codebook_size = int(quantizer.vocab_size)
        self.num_classes = int(num_classes)
        self.vocab_size = self.codebook_size + self.num_classes
        scales = getattr(quantizer, "scales", None)
        self.tokens_per_image = int(scales[-1]) ** 2 if scales else None

    def class_token(self, label: int) -> int:
        """The start token of class ``label``."""
        if not 0 <= int(label) < self.num_classes:
            raise ValueError(f"class label must be in [0, {self.num_classes}), got {label}")
        return self.codebook_size + int(label)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [-1, 1] -> (B, h * w) raster-order code ids."""
        ids = self.quantizer.encode(images)
        if not isinstance(ids, (list, tuple)) or len(ids) != 1:
            raise ValueError("the quantizer must give one id map per image (a single-scale VQ tokenizer)")
        return ids[0]

    def encode(self, data) -> list[int]:
        """One image (C, H, W) -> its raster-order code ids (no class token)."""
        images = torch.as_tensor(data, dtype=torch.float32)
        return self.encode_images(images[None])[0].tolist()

    @torch.no_grad()
    def decode_batch(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, h * w) code ids -> (B, C, H, W) images."""
        return self.quantizer.decode_ids([ids.to(self.quantizer.codebook.weight.device)])

    def decode(self, ids) -> torch.Tensor:
        """A generated sequence (its last ``h * w`` ids are codes; a leading class token is dropped) -> image (C, H, W)."""
        ids = [int(i) for i in (ids.tolist() if torch.is_tensor(ids) else ids)]
        if ids and ids[0] >= self.codebook_size:
            ids = ids[1:]
        if self.tokens_per_image is not None and len(ids) != self.tokens_per_image:
            raise ValueError(f"an image is {self.tokens_per_image} code ids, got {len(ids)}")
        if any(i >= self.codebook_size for i in ids):
            raise ValueError(f"code ids must be below the codebook size {self.codebook_size} (class tokens only start a sequence)")
        return self.decode_batch(torch.tensor([ids]))[0]

    def token_latents(self) -> torch.Tensor:
        """(vocab_size, C): each token's latent vector; class tokens (no latent) are NaN rows."""
        codes = self.quantizer.codebook.weight.detach()
        missing = torch.full((self.num_classes, codes.shape[1]), float("nan"), dtype=codes.dtype, device=codes.device)
        return torch.cat([codes, missing])

    def fit(self, data, ctx=None, **options):
        """Train the quantizer (before the transformer), see its own ``fit``."""
        return self.quantizer.fit(data, ctx, **options) if hasattr(self.quantizer, "fit") else []

    def generate_samples(self, gen, *, n: int = 1, seed: int = 0, out=None, decoder=None) -> Path:
        """``genloom generate``: a PNG grid of class-conditional samples, ``n`` rows, one column per class."""
        from matplotlib import image as mpimg

        labels = [c for _ in range(max(1, n)) for c in range(self.num_classes)]
        result = gen.generate([[self.class_token(c)] for c in labels], max_new_tokens=self.tokens_per_image, decoder=decoder, seed=seed)
        codes = torch.tensor([[min(i, self.codebook_size - 1) for i in ids] for ids in result.ids])
        images = ((self.decode_batch(codes).clamp(-1, 1) + 1) / 2).cpu()  # (N, C, H, W) in [0, 1]
        count, channels, height, width = images.shape
        rows, cols = max(1, n), self.num_classes
        grid = torch.ones(channels, rows * (height + 1) + 1, cols * (width + 1) + 1)
        for i in range(count):
            r, c = divmod(i, cols)
            grid[:, 1 + r * (height + 1):1 + r * (height + 1) + height, 1 + c * (width + 1):1 + c * (width + 1) + width] = images[i]
        path = Path(out) if out else Path(gen.run_dir or ".") / "samples.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = grid[0].numpy() if channels == 1 else grid.permute(1, 2, 0).numpy()
        mpimg.imsave(str(path), picture, cmap="gray" if channels == 1 else None, vmin=0.0, vmax=1.0)
        return path

    def save(self, directory) -> None:
        """The quantizer's files and ``raster_vq.json`` (the number of classes) in ``directory``."""
        directory = Path(directory)
        self.quantizer.save(directory)
        (directory / "raster_vq.json").write_text(json.dumps({"num_classes": self.num_classes, "codebook_size": self.codebook_size}))

    def load(self, directory) -> None:
        """Read back what :meth:`save` wrote (a run directory's ``tokenizer/`` folder, or the run directory)."""
        directory = Path(directory)
        if not (directory / "raster_vq.json").exists() and (directory / "tokenizer" / "raster_vq.json").exists():
            directory = directory / "tokenizer"
        meta = directory / "raster_vq.json"
        if not meta.exists():
            raise FileNotFoundError(f"no raster-vq tokenizer files in '{directory}' (raster_vq.json is missing)")
        info = json.loads(meta.read_text())
        if int(info["codebook_size"]) != self.codebook_size:
            raise ValueError(f"'{directory}' holds a {info['codebook_size']}-entry codebook, the quantizer has {self.codebook_size}")
        self.quantizer.load(directory)
        self.num_classes = int(info["num_classes"])
        self.vocab_size = self.codebook_size + self.num_classes


def build_tokenizer(config: RasterVQConfig, ctx) -> RasterVQTokenizer:
    quantizer = ctx.build("tokenizer", dict(config.quantizer), path="tokenizer.quantizer")
    num_classes = config.num_classes or int(ctx.get("num_classes", 1))
    tokenizer = RasterVQTokenizer(quantizer, num_classes)
    if config.quantizer_from is not None:
        from genloom.core.errors import ConfigError

        try:
            tokenizer.load(config.quantizer_from)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"could not load the quantizer: {exc}", path="tokenizer.quantizer_from") from exc
    if tokenizer.tokens_per_image is not None:
        ctx.set("seq_len", tokenizer.tokens_per_image + 1)
    ctx.set("num_classes", tokenizer.num_classes)
    return tokenizer


class RasterNextToken(Objective):
    """Next-token cross-entropy on the image tokens of ``[class token, raster ids]`` (causal)."""

    pattern = CAUSAL

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def sequences(self, model, batch: dict) -> torch.Tensor:
        """(B, 1 + h * w) training sequences of a batch of ``{"image", "label"}``."""
        tokenizer = model.tokenizer
        ids = tokenizer.encode_images(batch["image"])
        start = tokenizer.codebook_size + batch["label"].long().to(ids.device)
        return torch.cat([start[:, None], ids], 1)

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        seq = self.sequences(model, batch)
        logits = model(seq[:, :-1], pattern=self.pattern)
        targets = seq[:, 1:]
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), label_smoothing=self.label_smoothing)
        nll = model.head.token_nll(logits.detach(), targets)
        return {
            "loss": loss,
            "_nats": nll.sum(),
            "_tokens": torch.tensor(float(targets.numel())),
            "accuracy": (logits.detach().argmax(-1) == targets).float().mean(),
        }


def build_objective(config: RasterNextTokenConfig, ctx) -> RasterNextToken:
    return RasterNextToken(config.label_smoothing)


def token_latents(model) -> torch.Tensor:
    """(V, C) latent vector of every token of ``model``'s vocabulary.

    The tokenizer's ``token_latents()`` when it has one (an image tokenizer's codebook), else the
    head's input embedding table (``head.embedding.weight`` or ``head.embed`` of every id).
    Rows of NaN mark tokens without a latent (each is then its own only neighbour).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if hasattr(tokenizer, "token_latents"):
        return tokenizer.token_latents().detach()
    vocab = int(model.ctx.vocab_size)
    with torch.no_grad():
        ids = torch.arange(vocab, device=next(model.parameters()).device)
        return model.head.embed(ids[None])[0].detach()


def latent_neighbours(latents: torch.Tensor, k: int) -> torch.Tensor:
    """(V, k) ids of each token's ``k`` nearest tokens in latent space (Euclidean), nearest first.

    Column 0 is the token itself; ties are broken by id. A token without a latent (a NaN row) and
    the tokens beyond the vocabulary are marked ``-1`` (so row ``x`` of a NaN token is ``[x, -1, ...]``).
    """
    latents = latents.double()
    vocab = latents.shape[0]
    k = min(int(k), vocab)
    missing = torch.isnan(latents).any(-1)
    safe = torch.where(missing[:, None], torch.zeros_like(latents), latents)
    distance = torch.cdist(safe, safe)
    distance = distance.masked_fill(missing[:, None] | missing[None, :], float("inf"))
    distance.fill_diagonal_(-1.0)  # the token itself first, whatever the ties
    order = torch.sort(distance + torch.arange(vocab, dtype=distance.dtype) * 1e-12, dim=1, stable=True)
    ids = order.indices[:, :k]
    far = torch.isinf(order.values[:, :k])
    return ids.masked_fill(far, -1)
