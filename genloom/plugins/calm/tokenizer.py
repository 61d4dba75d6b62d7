"""CALM's chunk autoencoder: K token ids <-> one latent vector z, over a base tokenizer.

Encoder: each of the K token embeddings passes a position-wise residual SwiGLU block; the K
vectors are flattened and projected to the hidden width, pass another residual block, and a
linear map gives the posterior's mean mu and log-variance (dimension l each). Decoder: the
mirror image, z -> hidden -> K vectors -> residual block -> logits through the tied token
embedding. Training (:meth:`ChunkAutoencoder.fit`, the paper's recipe):

    loss = CE(decode(z), tokens) summed over the K tokens + beta * sum_d max(KL_d, lambda_KL)

with z = mu + sigma * eps, dropout on z, and a fraction of the input tokens replaced by a
learned mask embedding, so that the decoder tolerates the imprecise vectors a generative model
will hand it. Afterwards the autoencoder is frozen; text <-> ids stays the base tokenizer's job.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from genloom.core.model import Tokenizer


class ResidualSwiGLU(nn.Module):
    """x + W_out(silu(W_gate LN(x)) * W_up LN(x)): the position-wise block of encoder and decoder."""

    def __init__(self, width: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 2 * width
        self.norm = nn.LayerNorm(width)
        self.gate_up = nn.Linear(width, 2 * hidden)
        self.out = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(self.norm(x)).chunk(2, -1)
        return x + self.out(F.silu(gate) * up)


class ChunkAutoencoder(nn.Module, Tokenizer):
    """A tokenizer (the base's ids) that also maps every K ids to a latent vector and back."""

    def __init__(self, config, base):
        nn.Module.__init__(self)
        self.config = config
        self.base = base
        self.chunk_size = config.chunk_size
        self.latent_dim = config.latent_dim
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.built_vocab: int | None = None
        if getattr(base, "vocab_size", None) is not None and _base_ready(base):
            self.make_modules(int(base.vocab_size))

    # -- text <-> ids: the base tokenizer's --------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.base.vocab_size)

    @property
    def eos_id(self):
        return getattr(self.base, "eos_id", None)

    def encode(self, data) -> list[int]:
        return self.base.encode(data)

    def decode(self, ids):
        return self.base.decode(ids)

    def __getattr__(self, name):
        # encode_array / encode_many / token_bytes (what data sets look for) come from the base
        if name in ("encode_array", "encode_many", "token_bytes"):
            base = self._modules.get("base") or self.__dict__.get("base")
            if base is not None and hasattr(base, name):
                return getattr(base, name)
        return nn.Module.__getattr__(self, name)

    # -- the autoencoder ---------------------------------------------------------------------
    def make_modules(self, vocab_size: int) -> None:
        """Create the layers for a vocabulary of ``vocab_size`` ids (once the base is fitted)."""
        if self.built_vocab == vocab_size:
            return
        H, K, l = self.config.hidden, self.chunk_size, self.latent_dim
        g = torch.random.fork_rng(devices=[])
        with g:
            torch.manual_seed(self.config.fit_seed)
            self.embedding = nn.Embedding(vocab_size, H)
            nn.init.normal_(self.embedding.weight, std=H**-0.5)
            self.mask_embedding = nn.Parameter(torch.zeros(H))
            self.enc_token = ResidualSwiGLU(H)
            self.enc_merge = nn.Linear(K * H, H)
            self.enc_chunk = ResidualSwiGLU(H)
            self.enc_out = nn.Linear(H, 2 * l)
            self.dec_in = nn.Linear(l, H)
            self.dec_chunk = ResidualSwiGLU(H)
            self.dec_split = nn.Linear(H, K * H)
            self.dec_token = ResidualSwiGLU(H)
            self.dec_norm = nn.LayerNorm(H)
        self.built_vocab = vocab_size

    def _require(self) -> None:
        if self.built_vocab is None:
            raise RuntimeError("the calm-chunks autoencoder has no layers yet: it is fitted on the data set's training split "
                               "before training, or loaded from a run directory")

    def chunks(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, n*K) ids -> (B, n, K); the length must be a whole number of chunks."""
        if ids.shape[-1] % self.chunk_size:
            raise ValueError(f"{ids.shape[-1]} ids are not a whole number of chunks of chunk_size={self.chunk_size}")
        return ids.reshape(*ids.shape[:-1], ids.shape[-1] // self.chunk_size, self.chunk_size)

    def posterior(self, chunks: torch.Tensor, token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., K) ids -> posterior mean and log-variance (..., l). ``token_mask`` (..., K) True
        replaces those inputs by the mask embedding (training's token dropout)."""
        self._require()
        x = self.embedding(chunks)
        if token_mask is not None:
            x = torch.where(token_mask[..., None], self.mask_embedding.to(x.dtype), x)
        x = self.enc_token(x).flatten(-2)
        x = self.enc_chunk(self.enc_merge(x))
        mean, logvar = self.enc_out(x).chunk(2, -1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode_chunks(self, chunks: torch.Tensor) -> torch.Tensor:
        """The latent vector of each chunk: the posterior mean (..., l)."""
        return self.posterior(chunks)[0]

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """(..., l) latents -> (..., K, V) token logits."""
        self._require()
        x = self.dec_chunk(self.dec_in(z))
        x = self.dec_split(x).unflatten(-1, (self.chunk_size, self.config.hidden))
        x = self.dec_norm(self.dec_token(x))
        return x @ self.embedding.weight.t()

    def decode_vectors(self, z: torch.Tensor) -> torch.Tensor:
        """(..., l) latents -> (..., K) token ids (argmax per token, as the paper decodes)."""
        return self.decode_logits(z).argmax(-1)

    def autoencoder_loss(self, chunks: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The training loss on (N, K) chunks with the paper's regularisers (noise from ``generator``)."""
        cfg = self.config
        dev = chunks.device
        token_mask = torch.rand(chunks.shape, generator=generator, device=dev) < cfg.token_dropout if cfg.token_dropout > 0 else None
        mean, logvar = self.posterior(chunks, token_mask)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator, device=dev)
        if cfg.latent_dropout > 0:
            keep = (torch.rand(z.shape, generator=generator, device=dev) >= cfg.latent_dropout).to(z.dtype)
            z = z * keep / (1.0 - cfg.latent_dropout)
        logits = self.decode_logits(z)
        reconstruction = F.cross_entropy(logits.flatten(0, -2), chunks.flatten(), reduction="sum") / chunks.shape[0]
        kl_per_dim = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)  # KL(N(mu, sigma^2) || N(0, 1)) per dimension
        kl = kl_per_dim.mean(0)
        kl_clipped = kl.clamp_min(cfg.kl_clip).sum()
        return {"loss": reconstruction + cfg.kl_weight * kl_clipped, "reconstruction": reconstruction, "kl": kl.sum()}

    def fit(self, source, ctx=None, *, log_every: int = 0) -> list[float]:
        """Fit the base tokenizer (if it needs it), then train the autoencoder on the training
        split's token stream and freeze it. Skipped when already fitted (a loaded run). Returns
        the loss curve."""
        if hasattr(self.base, "fit"):
            self.base.fit(source, ctx)
        if bool(self.fitted):
            return []
        self.make_modules(int(self.base.vocab_size))
        stream = token_stream(source.load("train", self, ctx) if hasattr(source, "load") else source)
        return self.fit_stream(stream, log_every=log_every)

    def fit_stream(self, stream: torch.Tensor, *, steps: int | None = None, log_every: int = 0) -> list[float]:
        """Train on random K-token chunks of a 1-D id stream (``steps``: the config's ``fit_steps``)."""
        cfg = self.config
        steps = cfg.fit_steps if steps is None else steps
        K = self.chunk_size
        if len(stream) < K:
            raise ValueError(f"the training stream has {len(stream)} ids, fewer than one chunk of {K}")
        self.make_modules(int(self.base.vocab_size))
        device = self.embedding.weight.device
        stream = stream.to(device)
        generator = torch.Generator(device=device).manual_seed(cfg.fit_seed)
        params = [p for n, p in self.named_parameters() if not n.startswith("base.")]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=cfg.fit_lr, betas=(0.9, 0.95), weight_decay=0.0)
        warmup = max(1, steps // 20)
        offsets = torch.arange(K, device=device)
        losses = []
        was_training = self.training
        self.train()
        for step in range(steps):
            lr = cfg.fit_lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1.0 + math.cos(math.pi * step / steps)))  # cosine to 10%
            for group in optimizer.param_groups:
                group["lr"] = lr
            starts = torch.randint(len(stream) - K + 1, (cfg.fit_batch_size,), generator=generator, device=device)
            out = self.autoencoder_loss(stream[starts[:, None] + offsets], generator)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(out["loss"].detach()))
            if log_every and step % log_every == 0:
                print(f"calm-chunks fit step {step}: loss {losses[-1]:.4f} (reconstruction {float(out['reconstruction'].detach()):.4f}, kl {float(out['kl'].detach()):.2f})")
        self.train(was_training)
        for p in params:
            p.requires_grad_(False)
        self.fitted.fill_(True)
        return losses

    @torch.no_grad()
    def reconstruction_accuracy(self, stream: torch.Tensor, *, sample: bool = False, batch: int = 4096, generator: torch.Generator | None = None) -> float:
        """Fraction of tokens of a 1-D id stream (cut into consecutive chunks) that decode back
        exactly: from the posterior mean, or from a posterior sample (``sample``)."""
        K = self.chunk_size
        n = len(stream) // K
        if n == 0:
            raise ValueError(f"the stream has {len(stream)} ids, fewer than one chunk of {K}")
        chunks = stream[: n * K].reshape(n, K).to(self.embedding.weight.device)
        correct = 0
        for i in range(0, n, batch):
            part = chunks[i : i + batch]
            mean, logvar = self.posterior(part)
            z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator, device=mean.device) if sample else mean
            correct += int((self.decode_vectors(z) == part).sum())
        return correct / (n * K)

    # -- run directories ---------------------------------------------------------------------
    def save(self, directory) -> None:
        """The base tokenizer's files, then ``calm_autoencoder.json`` / ``.safetensors``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if hasattr(self.base, "save"):
            self.base.save(directory)
        (directory / "calm_autoencoder.json").write_text(json.dumps({"vocab_size": self.built_vocab, "fitted": bool(self.fitted)}))
        if self.built_vocab is not None:
            weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("base.")}
            save_file(weights, str(directory / "calm_autoencoder.safetensors"))

    def load(self, directory) -> None:
        from safetensors.torch import load_file

        directory = Path(directory)
        if hasattr(self.base, "load"):
            self.base.load(directory)
        meta = directory / "calm_autoencoder.json"
        if not meta.exists():
            from genloom.core.errors import CheckpointError

            raise CheckpointError(f"the calm-chunks autoencoder file '{meta}' is missing from the run directory")
        vocab = json.loads(meta.read_text())["vocab_size"]
        if vocab is not None:
            self.make_modules(int(vocab))
            self.load_state_dict(load_file(str(directory / "calm_autoencoder.safetensors")), strict=False)
            for p in self.parameters():
                p.requires_grad_(False)


def _base_ready(base) -> bool:
    """A base that needs no fitting (bytes) or is already fitted (a loaded BPE)."""
    return not hasattr(base, "fit") or bool(getattr(base, "trained", False))


def token_stream(dataset) -> torch.Tensor:
    """A data set's 1-D id stream (``TokenWindows.stream``), or its samples' ids concatenated."""
    stream = getattr(dataset, "stream", None)
    if stream is not None:
        return torch.as_tensor(np.asarray(stream, dtype=np.int64))
    return torch.cat([torch.as_tensor(dataset[i]["ids"]).reshape(-1) for i in range(len(dataset))])


def build_tokenizer(config, ctx) -> ChunkAutoencoder:
    base = ctx.build("tokenizer", config.base, path=f"{ctx.current or 'tokenizer'}.base")
    return ChunkAutoencoder(config, base)
