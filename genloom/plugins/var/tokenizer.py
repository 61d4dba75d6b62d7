"""VAR's multi-scale residual VQ autoencoder (the `var-vq` tokenizer), paper Sec. 3.2 / Algorithm 1-2.

The encoder maps an image to a feature map ``f`` (C, h, w). Scale k (side s_k) quantizes the
residual ``f - f_hat`` area-downsampled to s_k x s_k against ONE shared codebook, upsamples the code
embeddings back to h x w (bicubic) and passes them through a small convolution phi_k; the result is
added to ``f_hat`` and removed from the residual. ``f_hat`` after K scales is what the decoder turns
back into an image, so the sum over scales of the phi_k(up(z_k)) maps is the decoder's input, exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from genloom.core.model import Tokenizer


class Phi(nn.Module):
    """phi_k: a 3x3 convolution mixed with identity, x (1 - ratio) + conv(x) ratio (VAR's quant_resi)."""

    def __init__(self, channels: int, ratio: float):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1.0 - self.ratio) + self.conv(x) * self.ratio


def _encoder(in_channels: int, hidden: int, latent: int, stages: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.SiLU()]
    for _ in range(stages):
        layers += [nn.Conv2d(hidden, hidden, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU()]
    layers.append(nn.Conv2d(hidden, latent, 1))
    return nn.Sequential(*layers)


def _decoder(latent: int, hidden: int, out_channels: int, stages: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(latent, hidden, 3, padding=1), nn.SiLU()]
    for _ in range(stages):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU()]
    layers.append(nn.Conv2d(hidden, out_channels, 3, padding=1))
    return nn.Sequential(*layers)


class MultiScaleVQ(nn.Module, Tokenizer):
    """Multi-scale residual VQ autoencoder with one shared codebook (the ``var-vq`` tokenizer).

    Token ids come as a list with one (B, s_k * s_k) tensor per scale (row-major). The
    transformer's input for scale k (k >= 2) is :meth:`next_scale_input` of the ``f_hat``
    accumulated over scales < k, which :meth:`embed_scales` gives for all scales at once.
    Its modules are made once the image shape is known: at construction, or in :meth:`load`
    (a run directory's tokenizer is rebuilt without the data set).
    """

    def __init__(self, config, image_shape: tuple[int, int, int] | None = None):
        super().__init__()
        self.config = config
        self.scales = tuple(config.scales)
        self.latent_side = self.scales[-1]
        self.latent_channels = config.latent_channels
        self.vocab_size = config.codebook_size
        self.beta = config.beta
        self.upsample_mode = config.upsample_mode
        self.image_shape = None
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        if image_shape is not None:
            self.make_modules(tuple(int(x) for x in image_shape))

    def make_modules(self, image_shape: tuple[int, int, int]) -> None:
        channels, height, width = image_shape
        side = self.latent_side
        if height != width or height % side or (height // side) & (height // side - 1):
            raise ValueError(f"image {height}x{width} must be square and a power-of-two multiple of the last scale {side}")
        stages = int(math.log2(height // side))
        cfg = self.config
        self.image_shape = (channels, height, width)
        self.encoder = _encoder(channels, cfg.hidden_channels, cfg.latent_channels, stages)
        self.decoder = _decoder(cfg.latent_channels, cfg.hidden_channels, channels, stages)
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.latent_channels)
        nn.init.uniform_(self.codebook.weight, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
        self.phi = nn.ModuleList(Phi(cfg.latent_channels, cfg.phi_ratio) for _ in self.scales)

    # -- sequence layout ---------------------------------------------------------------------
    @property
    def scale_lengths(self) -> tuple[int, ...]:
        """Tokens per scale: s_k * s_k."""
        return tuple(s * s for s in self.scales)

    @property
    def seq_len(self) -> int:
        return sum(self.scale_lengths)

    # -- resampling --------------------------------------------------------------------------
    def _down(self, x: torch.Tensor, side: int) -> torch.Tensor:
        return x if x.shape[-1] == side else F.interpolate(x, size=(side, side), mode="area")

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        side = self.latent_side
        return x if x.shape[-1] == side else F.interpolate(x, size=(side, side), mode=self.upsample_mode, **({} if self.upsample_mode in ("nearest", "area") else {"align_corners": False}))

    # -- quantization ------------------------------------------------------------------------
    def nearest_codes(self, vectors: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry for each row of ``vectors`` (N, C)."""
        codes = self.codebook.weight
        distance = vectors.pow(2).sum(1, keepdim=True) - 2.0 * vectors @ codes.T + codes.pow(2).sum(1)[None]
        return distance.argmin(1)

    def scale_contribution(self, k: int, ids: torch.Tensor) -> torch.Tensor:
        """phi_k(upsample(codebook[ids])): the (B, C, h, w) map that scale k adds to f_hat."""
        side = self.scales[k]
        z = self.codebook(ids).view(ids.shape[0], side, side, -1).permute(0, 3, 1, 2)
        return self.phi[k](self._up(z))

    def quantize(self, f: torch.Tensor):
        """Residual quantization of features ``f`` (B, C, h, w), Algorithm 1.

        Returns ``(f_hat, ids, vq_loss)``; ``f_hat`` is straight-through (its value is the sum of the
        scale contributions, its gradient flows to ``f``), ``vq_loss`` is the codebook + commitment loss
        averaged over scales.
        """
        f_detached = f.detach()
        residual = f_detached
        f_hat = torch.zeros_like(f_detached)
        ids, vq_loss = [], f.new_zeros(())
        for k, side in enumerate(self.scales):
            r = self._down(residual, side)
            flat = r.permute(0, 2, 3, 1).reshape(-1, r.shape[1])
            idx = self.nearest_codes(flat).view(f.shape[0], side * side)
            contribution = self.scale_contribution(k, idx)
            f_hat = f_hat + contribution
            residual = residual - contribution.detach()
            ids.append(idx)
            # codebook/phi move toward f; the encoder is committed toward f_hat (beta)
            vq_loss = vq_loss + F.mse_loss(f_hat, f_detached) + self.beta * F.mse_loss(f, f_hat.detach())
        if self.training and torch.is_grad_enabled():  # straight-through: the value of f_hat, the gradient of f (to the encoder)
            f_hat = f_hat.detach() - f_detached + f
        return f_hat, ids, vq_loss / len(self.scales)

    # -- public tokenizer API ----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor):
        """Images (B, C, H, W) in [-1, 1] -> list of K id tensors (B, s_k * s_k).

        One image (C, H, W) gives its flat list of ids (scales concatenated coarse to fine), the
        layout a generated sequence has.
        """
        images = torch.as_tensor(images, dtype=torch.float32)
        if images.dim() == 3:
            return torch.cat(self.encode(images[None]), 1)[0].tolist()
        self._require_modules()
        return self.quantize(self.encoder(images))[1]

    def decode(self, ids) -> torch.Tensor:
        """One flat id sequence (a whole number of scales) -> image (C, H, W) in about [-1, 1]."""
        flat = torch.as_tensor(list(ids) if not torch.is_tensor(ids) else ids, dtype=torch.long).reshape(1, -1)
        with torch.no_grad():
            return self.decode_ids(self.split_scales(flat.to(self.codebook.weight.device)))[0]

    def ids_to_fhat(self, ids: list[torch.Tensor]) -> torch.Tensor:
        """f_hat from the first len(ids) scales: the sum of their contributions."""
        f_hat = self.scale_contribution(0, ids[0])
        for k in range(1, len(ids)):
            f_hat = f_hat + self.scale_contribution(k, ids[k])
        return f_hat

    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(f_hat)

    def decode_ids(self, ids: list[torch.Tensor]) -> torch.Tensor:
        """List of the first k <= K scales' ids -> images (B, C, H, W) (coarse when k < K)."""
        return self.decode_fhat(self.ids_to_fhat(ids))

    def split_scales(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(B, n) ids -> per-scale (B, s_k^2) tensors of the complete scales among the first n ids."""
        lengths, total = [], 0
        for n in self.scale_lengths:
            if total + n > flat.shape[1]:
                break
            lengths.append(n)
            total += n
        if not lengths:
            raise ValueError(f"{flat.shape[1]} ids do not complete the first scale ({self.scale_lengths[0]} ids)")
        return list(flat[:, :total].split(lengths, dim=1))

    def next_scale_input(self, f_hat: torch.Tensor, k: int) -> torch.Tensor:
        """The transformer's input features for scale k: f_hat (of scales < k) area-resized to s_k, (B, s_k^2, C)."""
        return self._down(f_hat, self.scales[k]).flatten(2).transpose(1, 2)

    def embed_scales(self, ids: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing inputs of scales 2..K: (B, sum_{k>=2} s_k^2, C) latent features.

        Scale k's input is the f_hat accumulated from the tokens of scales < k, resized to
        s_k x s_k (Sec. 3.2); scale 1's input is the class token, which the head embeds.
        """
        f_hat, inputs = None, []
        for k in range(1, len(self.scales)):
            contribution = self.scale_contribution(k - 1, ids[k - 1])
            f_hat = contribution if f_hat is None else f_hat + contribution
            inputs.append(self.next_scale_input(f_hat, k))
        if not inputs:
            return self.codebook.weight.new_zeros((ids[0].shape[0], 0, self.latent_channels))
        return torch.cat(inputs, 1)

    # -- training ----------------------------------------------------------------------------
    def forward(self, images: torch.Tensor):
        """Reconstruction and VQ loss: ``(reconstruction, ids, vq_loss)``."""
        f_hat, ids, vq_loss = self.quantize(self.encoder(images))
        return self.decoder(f_hat), ids, vq_loss

    def fit(self, data, ctx=None, *, log_every: int = 0) -> list[float]:
        """Train the autoencoder on training images: reconstruction MSE + VQ loss (config fit_* fields).

        ``data`` is a data source (its "train" split is used) or a data set of ``{"image": ...}``
        samples. Skipped when already fitted (a tokenizer loaded from a run). Returns the loss
        curve; afterwards the tokenizer is in eval mode and frozen.
        """
        if bool(self.fitted):
            return []
        dataset = data.load("train", self, ctx) if hasattr(data, "load") else data
        if self.image_shape is None:
            self.make_modules(tuple(dataset[0]["image"].shape))
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.fit_seed)
        images_all = getattr(dataset, "images", None)
        optimizer = torch.optim.Adam(self.parameters(), lr=cfg.fit_lr)
        losses = []
        self.train()
        for step in range(cfg.fit_steps):
            index = torch.randint(len(dataset), (cfg.fit_batch_size,), generator=generator)
            images = images_all[index] if images_all is not None else torch.stack([dataset[int(i)]["image"] for i in index])
            images = images.to(self.codebook.weight.device)
            reconstruction, _, vq_loss = self(images)
            loss = F.mse_loss(reconstruction, images) + vq_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for group in optimizer.param_groups:  # cosine decay to 10%
                group["lr"] = cfg.fit_lr * (0.55 + 0.45 * math.cos(math.pi * (step + 1) / cfg.fit_steps))
            losses.append(loss.item())
            if log_every and step % log_every == 0:
                print(f"var-vq fit step {step}: loss {losses[-1]:.4f}")
        self.requires_grad_(False)
        self.fitted.fill_(True)
        return losses

    # -- run directories ---------------------------------------------------------------------
    def save(self, directory) -> None:
        """Write the image shape and the fitted weights (``var_vq.json``, ``var_vq.safetensors``)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "var_vq.json").write_text(json.dumps({"image_shape": list(self.image_shape) if self.image_shape else None}))
        if self.image_shape is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(directory / "var_vq.safetensors"))

    def load(self, directory) -> None:
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = directory / "var_vq.json"
        if not meta.exists():
            return
        shape = json.loads(meta.read_text())["image_shape"]
        if shape is not None and self.image_shape is None:
            self.make_modules(tuple(shape))
        weights = directory / "var_vq.safetensors"
        if weights.exists():
            self.load_state_dict(load_file(str(weights)))
            self.requires_grad_(False)

    def _require_modules(self) -> None:
        if self.image_shape is None:
            raise RuntimeError("the var-vq tokenizer does not know its image shape yet: set tokenizer.image_shape, use a data set that "
                               "publishes channels/height/width, or load a run directory's tokenizer")

    # -- genloom generate ----------------------------------------------------------------------
    def generate_samples(self, gen, *, n: int = 1, seed: int = 0, out=None, decoder=None) -> Path:
        """Write a PNG grid of class-conditional samples: ``n`` rows, one column per class."""
        from genloom.plugins.var.grid import save_grid

        num_classes = int(gen.ctx.get("num_classes", 1))
        labels = [c for _ in range(max(1, n)) for c in range(num_classes)]
        result = gen.generate([[c] for c in labels], max_new_tokens=self.seq_len, decoder=decoder, seed=seed)
        images = torch.stack([self.decode(ids) for ids in result.ids])
        path = Path(out) if out else Path(gen.run_dir or ".") / "samples.png"
        save_grid(images, path, nrow=num_classes)
        return path


def build_tokenizer(config, ctx) -> MultiScaleVQ:
    shape = config.image_shape
    if shape is None and all(k in ctx for k in ("channels", "height", "width")):
        shape = (ctx.channels, ctx.height, ctx.width)
    return MultiScaleVQ(config, shape)
