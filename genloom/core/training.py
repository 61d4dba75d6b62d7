"""Config-driven training with Lightning.

:class:`GenloomModule` trains any (tokenizer, head, backbone, objective) combination that
:func:`genloom.core.model.assemble` builds: it calls ``model.loss(batch)`` and logs what comes back.
:class:`GenloomDataModule` serves a data-set component's splits. :func:`train` is what
``genloom train`` runs: compose and validate the config, assemble, fit, export, sample.

Conventions this module owns (written down in docs/training.md):

- ``model.loss(batch)`` returns ``{"loss": scalar, **metrics}``. Keys starting with ``_`` are
  sums (``_nats``, ``_tokens``, ``_bytes``...): validation adds them up over the whole split and
  across ranks, so ``val/loss`` = sum nats / sum tokens and ``val/bits_per_byte`` = sum nats / ln 2
  / sum bytes are exact, not means of per-batch ratios. Other metrics are averaged over samples.
- ``data.batch_size`` is per device; the global batch is batch_size x devices x nodes.
- The training data order is a pure function of (seed, batch index): pass ``p`` over the training
  split uses the permutation drawn from a generator seeded with (seed, p), and batch ``i`` is slice
  ``i`` of it; every rank takes its part of the global batch. A resumed run restarts the sampler at
  the number of batches already trained on (saved in the checkpoint through Lightning's stateful
  data-loader protocol), so the order continues exactly.
- The global torch/numpy/python random states are saved in every checkpoint and restored at
  ``on_train_start``; validation runs under a fixed seed and gives the training random state back
  afterwards, so noise-sampling objectives (masked diffusion...) also resume exactly.
- Under data parallelism every rank has its own random stream (rank 0 the seed's, rank r > 0 one
  derived by :func:`seed_rank`), so noise-sampling objectives draw different noise for each
  rank's samples; checkpoints keep every rank's state.
- A non-finite loss stops the run with :class:`TrainingDiverged` naming the optimizer step; a
  checkpoint is never written from non-finite parameters, so the last good one stays.
- Checkpoints are written to a temporary file and renamed (a kill mid-write never leaves a
  half-written ``last.ckpt``) and are read with ``torch.load(weights_only=True)`` after a CRC check
  of the archive; a damaged file raises :class:`~genloom.core.errors.CheckpointError` naming it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import random
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from genloom.core import runio
from genloom.core.errors import CheckpointError, ConfigError, GenloomError

log = logging.getLogger("genloom.training")

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
METRICS = "metrics.json"


class TrainingDiverged(GenloomError):
    """The loss (or the parameters) became NaN or infinite; the message names the optimizer step."""


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices; no decay on norms, biases (any parameter with < 2 dims) and embeddings.

    A module may also list parameter names to exempt in ``no_weight_decay()`` (the timm habit).
    Shared parameters (tied embeddings) appear once.
    """
    exempt: set[int] = set()
    for module in model.modules():
        is_embedding = isinstance(module, nn.Embedding)
        is_norm = isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()
        named = dict(module.named_parameters(recurse=False))
        listed = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
        for name, p in named.items():
            if is_embedding or is_norm or p.ndim < 2 or name in listed:
                exempt.add(id(p))
        for name, p in module.named_parameters():
            if name in listed:
                exempt.add(id(p))
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if id(p) in exempt else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str = "cosine", min_lr_ratio: float = 0.1) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps  # linear warmup, never exactly 0
    if schedule == "constant":
        return 1.0
    progress = min(max((step - warmup_steps) / max(1, total_steps - warmup_steps), 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Random states (exact resume)
# ---------------------------------------------------------------------------------------------

def get_rng_state() -> dict:
    """torch (CPU and CUDA), numpy and python random states as plain containers (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.as_tensor(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_rank(seed: int, rank: int, batches_seen: int = 0) -> int:
    """Seed torch (CPU and CUDA), numpy and python for data-parallel rank ``rank`` > 0 from
    (``seed``, ``rank``, ``batches_seen``); returns the derived seed. Rank 0 keeps ``seed``'s own stream."""
    derived = (seed * 1_000_003 + rank * 7_919 + batches_seen * 104_729) % (2**63 - 1)
    torch.manual_seed(derived)
    np.random.seed(derived % 2**32)
    random.seed(derived)
    return derived


# ---------------------------------------------------------------------------------------------
# The LightningModule
# ---------------------------------------------------------------------------------------------

def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        for v in batch.values():
            if torch.is_tensor(v) and v.dim() > 0:
                return int(v.shape[0])
    if torch.is_tensor(batch):
        return int(batch.shape[0])
    return 1


def _token_count(out: dict, batch) -> float:
    if "_tokens" in out:
        return float(out["_tokens"])
    if isinstance(batch, dict) and torch.is_tensor(batch.get("ids")):
        ids = batch["ids"]
        return float(ids.shape[0] * max(ids.shape[-1] - 1, 1))
    return float(_batch_size(batch))


class GenloomModule(L.LightningModule):
    """Trains an assembled :class:`~genloom.core.model.GenerativeModel` through ``model.loss(batch)``."""

    def __init__(self, model: nn.Module, optimizer, trainer_config, *, seed: int = 0, config: dict | None = None):
        super().__init__()
        self.model = model
        self.optimizer_config = optimizer
        self.trainer_config = trainer_config
        self.seed = seed
        self.config_dict = config
        self.batches_seen = 0  # training batches whose step ran (the data sampler resumes from it)
        self.last_val_step = -1
        self.val_metrics: dict[str, float] = {}
        self._rng_to_restore: dict | None = None
        self._train_rng: dict | None = None
        self._tick: float | None = None
        self._tokens_per_s: float | None = None
        if trainer_config.compile:
            model.backbone.compile()  # in place: parameter names (and checkpoints) are unchanged

    def forward(self, ids, **kw):
        return self.model(ids, **kw)

    # -- training --------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        out = self.model.loss(batch)
        loss = out["loss"]
        step = self.global_step + 1  # the optimizer step this batch contributes to (1-based)
        world = self.trainer.world_size if self._trainer is not None else 1
        # mean over ranks: one all-reduce serves the log and makes every rank stop together on a NaN
        shown = self.trainer.strategy.reduce(loss.detach(), reduce_op="mean") if world > 1 else loss.detach()
        if not bool(torch.isfinite(shown).all()):
            raise TrainingDiverged(
                f"the loss became {float(shown.float())} at optimizer step {step} (training batch {self.batches_seen + 1}); "
                f"the run stopped and the last checkpoint written before it is kept. Lower optimizer.lr, raise optimizer.warmup_steps, "
                f"set trainer.gradient_clip_val, or use trainer.precision=32."
            )
        self.batches_seen += 1
        bs = _batch_size(batch)
        self.log("train/loss", shown, prog_bar=True, on_step=True, on_epoch=False, batch_size=bs)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=bs)
        for key, value in out.items():
            if key == "loss" or key.startswith("_"):
                continue
            if torch.is_tensor(value) and value.numel() != 1:
                continue
            self.log(f"train/{key}", value.detach().float() if torch.is_tensor(value) else float(value), on_step=True, on_epoch=False, batch_size=bs)
        now = time.perf_counter()
        if self._tick is not None:
            rate = _token_count(out, batch) * world / max(now - self._tick, 1e-9)
            self._tokens_per_s = rate if self._tokens_per_s is None else 0.9 * self._tokens_per_s + 0.1 * rate
            self.log("tok/s", float(self._tokens_per_s), prog_bar=True, on_step=True, on_epoch=False, batch_size=bs)
        self._tick = now
        return loss

    def on_train_start(self):
        rank = self.global_rank if self._trainer is not None else 0
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        elif rank > 0:
            # every rank draws its own noise (masking, diffusion time, dropout): rank 0 keeps the
            # seed's stream, rank r > 0 one derived from (seed, r, batches already trained on)
            seed_rank(self.seed, rank, self.batches_seen)
        self._tick = None

    def configure_optimizers(self):
        cfg = self.optimizer_config
        groups = parameter_groups(self.model, cfg.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
        total = self.trainer_config.max_steps
        warmup, schedule, floor = cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio

        def factor(step):
            return lr_factor(step, warmup_steps=warmup, total_steps=total, schedule=schedule, min_lr_ratio=floor)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # -- validation ------------------------------------------------------------------------
    def on_validation_start(self):
        # validation draws its noise from a fixed seed and hands the training random state back
        self._train_rng = get_rng_state()
        torch.manual_seed(self.seed + VALIDATION_SEED_OFFSET)
        self._val = MetricSums()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._val.add(self.model, batch)

    def on_validation_epoch_end(self):
        metrics = self._reduce_validation()
        if self.trainer.sanity_checking:
            return
        self.val_metrics = metrics
        self.last_val_step = self.global_step
        if metrics:
            self.log_dict({f"val/{k}": v for k, v in metrics.items()}, on_step=False, on_epoch=True, sync_dist=False, batch_size=1)

    def on_validation_end(self):
        if self._train_rng is not None:
            set_rng_state(self._train_rng)
            self._train_rng = None
        self._tick = None  # validation time is not training throughput

    def _reduce_validation(self) -> dict[str, float]:
        sums, weighted = self._val.sums, self._val.weighted
        keys_s, keys_w = sorted(sums), sorted(weighted)
        world = self.trainer.world_size
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * world
            torch.distributed.all_gather_object(gathered, (keys_s, keys_w))
            keys_s = sorted({k for g in gathered for k in g[0]})
            keys_w = sorted({k for g in gathered for k in g[1]})
        vec = torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64) for k in keys_s]
                          + [torch.as_tensor(weighted.get(k, 0.0), dtype=torch.float64) for k in keys_w]
                          + [self._val.count.to(torch.float64)])
        if world > 1:
            vec = self.trainer.strategy.reduce(vec.to(self.device), reduce_op="sum").cpu().double()
        total = dict(zip(keys_s, vec[: len(keys_s)].tolist()))
        means = {k: v for k, v in zip(keys_w, vec[len(keys_s): len(keys_s) + len(keys_w)].tolist())}
        return MetricSums.finish(total, means, float(vec[-1]))

    # -- checkpoint state ------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        rng = self._train_rng if self._train_rng is not None else get_rng_state()  # never the validation stream
        checkpoint["genloom"] = {"batches_seen": self.batches_seen, "rng": rng, "config": self.config_dict, "last_val_step": self.last_val_step}
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank runs this hook; rank 0 writes the file with every rank's random state
            by_rank: list = [None] * world
            torch.distributed.all_gather_object(by_rank, rng)
            checkpoint["genloom"]["rng_by_rank"] = by_rank

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("genloom") or {}
        self.batches_seen = int(state.get("batches_seen", 0))
        self.last_val_step = int(state.get("last_val_step", -1))
        rank = self.global_rank if self._trainer is not None else 0
        by_rank = state.get("rng_by_rank") or []
        # a rank's own saved state; ranks the checkpoint has none for (a new world size) derive one at train start
        self._rng_to_restore = by_rank[rank] if rank < len(by_rank) else (state.get("rng") if rank == 0 else None)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

class TrainBatches(torch.utils.data.Sampler):
    """Batch sampler over the training split whose order is a pure function of (seed, batch index).

    Pass ``p`` over the split uses ``randperm(n)`` drawn from a generator seeded with
    ``seed * 1_000_003 + p``; global batch ``i`` of a pass is slice ``i`` of it (the partial tail is
    dropped), and rank ``r`` takes positions ``[r * batch_size, (r + 1) * batch_size)`` of the
    global batch. ``start`` skips the batches a resumed run has already trained on.
    """

    def __init__(self, n: int, batch_size: int, total_batches: int, seed: int = 0, rank: int = 0, world_size: int = 1, progress: Callable[[], int] | None = None):
        self.n, self.batch_size, self.total = n, batch_size, total_batches
        self.seed, self.rank, self.world = seed, rank, world_size
        self.global_batch = batch_size * world_size
        if n < self.global_batch:
            raise ConfigError(f"the training split has {n} samples, fewer than one global batch of {self.global_batch} "
                              f"(data.batch_size={batch_size} x {world_size} devices); lower data.batch_size", path="data.batch_size")
        self.per_pass = n // self.global_batch
        self.start = 0
        self.progress = progress
        self._perm: tuple[int, torch.Tensor] | None = None

    def permutation(self, p: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != p:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + p)
            self._perm = (p, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def global_indices(self, i: int) -> list[int]:
        p, j = divmod(i, self.per_pass)
        return self.permutation(p)[j * self.global_batch:(j + 1) * self.global_batch].tolist()

    def __iter__(self):
        for i in range(self.start, self.total):
            idx = self.global_indices(i)
            yield idx[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def __len__(self):
        return self.total

    def consumed(self) -> int:
        return int(self.progress()) if self.progress is not None else self.start


class ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader that Lightning saves and restores (``state_dict``): the batches already trained on."""

    def state_dict(self) -> dict:
        return {"batches_consumed": self.batch_sampler.consumed()}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.start = int(state.get("batches_consumed", 0))


class EvalShard(torch.utils.data.Sampler):
    """Rank ``r`` of ``world`` evaluates samples r, r + world, ...; nothing is dropped or repeated."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


#: Validation (and ``genloom evaluate``) draw their noise from ``seed + VALIDATION_SEED_OFFSET``.
VALIDATION_SEED_OFFSET = 7919


class MetricSums:
    """What validation adds up over a split: ``model.loss(batch)`` keys starting with ``_`` are
    summed (``_nats``, ``_tokens``, ``_bytes``), other scalar metrics (and the objective's
    ``metrics``) are averaged over samples; :meth:`finish` turns the totals into the figures logged."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.weighted: dict[str, torch.Tensor] = {}
        self.count = torch.zeros((), dtype=torch.float64)

    def add(self, model, batch) -> None:
        out = model.loss(batch)
        n = _batch_size(batch)
        extra = {}
        objective = getattr(model, "objective", None)
        if objective is not None and hasattr(objective, "metrics"):
            extra = objective.metrics(out, batch) or {}
        for key, value in list(out.items()) + list(extra.items()):
            v = value.detach().double().cpu() if torch.is_tensor(value) else torch.tensor(float(value), dtype=torch.float64)
            if v.numel() != 1:
                continue
            v = v.reshape(())
            if key.startswith("_"):
                self.sums[key] = self.sums.get(key, 0) + v
            else:
                self.weighted[key] = self.weighted.get(key, 0) + v * n
        self.count += n

    def result(self) -> dict[str, float]:
        """The figures of one process's sums (validation across ranks reduces them first)."""
        return self.finish({k: float(v) for k, v in self.sums.items()}, {k: float(v) for k, v in self.weighted.items()}, float(self.count))

    @staticmethod
    def finish(total: dict[str, float], means: dict[str, float], count: float) -> dict[str, float]:
        out: dict[str, float] = {}
        if count > 0:
            out.update({k: v / count for k, v in means.items()})
        nats, tokens, nbytes = total.get("_nats"), total.get("_tokens"), total.get("_bytes")
        if nats is not None and tokens:
            loss = nats / tokens
            out["loss"] = loss
            out["bits_per_token"] = loss / math.log(2)
            out["ppl"] = math.exp(min(loss, 30.0))
        if nats is not None and nbytes:
            out["bits_per_byte"] = nats / math.log(2) / nbytes
        for k, v in total.items():
            out[f"total{k}"] = v
        return out


class GenloomDataModule(L.LightningDataModule):
    """Serves ``DataSource.load(split, tokenizer, ctx)``: shuffled resumable training batches, full val/test splits."""

    def __init__(self, source, tokenizer, ctx, *, seed: int = 0, max_steps: int = 1000, accumulate: int = 1):
        super().__init__()
        self.source, self.tokenizer, self.ctx = source, tokenizer, ctx
        self.seed, self.max_steps, self.accumulate = seed, max_steps, accumulate
        self._datasets: dict[str, Any] = {}

    def dataset(self, split: str):
        if split not in self._datasets:
            self._datasets[split] = self.source.load(split, self.tokenizer, self.ctx)
        return self._datasets[split]

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader_kwargs(self) -> dict:
        workers = int(getattr(self.source, "num_workers", 0) or 0)
        return {"collate_fn": self.source.collate, "num_workers": workers, "generator": torch.Generator().manual_seed(self.seed),
                "persistent_workers": False, "pin_memory": torch.cuda.is_available()}

    def train_dataloader(self):
        ds = self.dataset("train")
        rank, world = self._rank_world()
        module = self.trainer.lightning_module if getattr(self, "trainer", None) is not None else None
        progress = (lambda: module.batches_seen) if module is not None else None
        sampler = TrainBatches(len(ds), int(self.source.batch_size), self.max_steps * self.accumulate, self.seed, rank, world, progress)
        return ResumableLoader(ds, batch_sampler=sampler, **self._loader_kwargs())

    def _eval_loader(self, split: str):
        ds = self.dataset(split)
        rank, world = self._rank_world()
        bs = int(getattr(self.source, "eval_batch_size", None) or self.source.batch_size)
        return torch.utils.data.DataLoader(ds, batch_size=bs, sampler=EvalShard(len(ds), rank, world), drop_last=False, **self._loader_kwargs())

    def val_dataloader(self):
        return self._eval_loader("val")

    def test_dataloader(self):
        return self._eval_loader("test")


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def verify_checkpoint(path: Path) -> None:
    """Raise :class:`CheckpointError` naming ``path`` if it is missing, truncated or corrupted (CRC check)."""
    runio.verify_checkpoint(path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Read a Lightning checkpoint without executing pickled code (``weights_only=True``)."""
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint '{path}' could not be read safely ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"'{path}' is not a Lightning checkpoint (no state_dict)")
    return state


class SafeCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file, fsyncs and renames; reads with weights_only=True after a CRC check."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with runio.atomic_write(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint(Path(path), map_location=map_location if map_location is not None else "cpu")


def check_finite_parameters(module: nn.Module, step: int, filepath) -> None:
    for name, p in module.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise TrainingDiverged(
                f"parameter '{name}' became NaN/inf at optimizer step {step}; the run stopped without "
                f"overwriting '{filepath}', which keeps the last good state. Lower optimizer.lr or set trainer.gradient_clip_val."
            )


class GuardedCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every N steps, never written from non-finite parameters."""

    def _save_checkpoint(self, trainer, filepath):
        check_finite_parameters(trainer.lightning_module, trainer.global_step, filepath)
        super()._save_checkpoint(trainer, filepath)


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar over the run's batches (a genloom run is one pass of max_steps batches)."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'train':{len(self.validation_description)}}"

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


# ---------------------------------------------------------------------------------------------
# train(): what `genloom train` runs
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, float]
    global_step: int
    seconds: float
    sample: str | None = None
    weights: Path | None = None


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def resolve(config, overrides=(), *, run_dir=None, registry=None):
    """Compose and validate; returns (validated, run_dir, source_dir) where source_dir is set when ``config`` was a run directory."""
    from genloom.core import config as config_mod

    overrides = list(overrides or [])
    source_dir = None
    if isinstance(config, config_mod.ValidatedConfig):
        validated = config
    elif isinstance(config, dict):
        validated = config_mod.validate(config_mod.compose(None, overrides, base=config), registry)
    else:
        path = Path(config)
        if path.is_dir():
            source_dir = path
            validated = runio.validate_run_config(path, overrides, registry)
        else:
            validated = config_mod.load(path, overrides, registry)
    if run_dir is None:
        run_dir = source_dir or validated.run.run_dir
    if run_dir is None:
        stem = Path(config).stem if isinstance(config, (str, Path)) else "run"
        run_dir = Path("runs") / stem
    return validated, Path(run_dir), source_dir


def config_tree(data: dict, title: str = "config"):
    from genloom.core.commands import config_tree as _tree

    return _tree(data, f"[bold]{title}[/bold]")


def _make_logger(validated, run_dir: Path):
    kind = validated.run.logger
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="logs")
    os.environ.setdefault("WANDB_MODE", "offline")  # never reach the network (or ask for a login) unless asked
    os.environ.setdefault("WANDB_SILENT", "true")
    if os.environ["WANDB_MODE"] in ("online", "run") and not os.environ.get("WANDB_API_KEY") and not _netrc_has_wandb():
        raise ConfigError("WANDB_MODE is online but no wandb credentials were found (WANDB_API_KEY or ~/.netrc); "
                          "run `wandb login` first, unset WANDB_MODE to log offline, or set logger=csv", path="logger")
    from lightning.pytorch.loggers import WandbLogger

    id_file = run_dir / "wandb_id.txt"
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = f"{run_dir.name}-{int(time.time())}"
        if _is_rank_zero():
            runio.write_text(id_file, run_id)
    return WandbLogger(project=validated.run.project, name=run_dir.name, id=run_id, save_dir=str(run_dir), resume="allow")


def _netrc_has_wandb() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.seed",
                 "lightning.pytorch.trainer.connectors.signal_connector"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*tensorboardX.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")


def _load_tokenizer(validated, registry, tok_dir: Path):
    from genloom.core.context import BuildContext
    from genloom.core.model import build_component
    from genloom.core.plugins import get_registry

    tok = build_component(validated.components["tokenizer"], BuildContext(registry or get_registry()))
    if hasattr(tok, "load"):
        tok.load(tok_dir)
    return tok


def _validation_sources(built, n: int) -> list[list[int]]:
    """The first ``n`` sources of the validation split (an empty source when the data set has no
    pairs to show): what the end-of-run sample of a source-conditioned model decodes without a prompt."""
    try:
        pairs = getattr(built.data.load("val", built.model.tokenizer, built.ctx), "pairs", None) if built.data is not None else None
    except Exception:  # the sample is a courtesy: a data set that cannot load its split here gets the empty source
        pairs = None
    return [list(src) for src, _ in pairs[:n]] if pairs else [[]] * n


def _sample(built, gen_cfg, run_dir) -> str | None:
    from genloom.core.generation import Generator

    tok = built.model.tokenizer
    if built.ctx.get("modality", "text") != "text" or not hasattr(tok, "decode"):
        return None
    prompt = gen_cfg.prompt
    n = max(1, gen_cfg.num_samples)
    if built.ctx.get("source_length"):  # a source-conditioned model: the prompt is the source
        sources = [list(tok.encode(prompt))] * n if prompt else _validation_sources(built, n)
        result = Generator(built, run_dir).generate(source=sources, max_new_tokens=gen_cfg.max_new_tokens, seed=gen_cfg.seed)
        texts, shown = result.decode(), [tok.decode(s) for s in sources]
        return "\n---\n".join(f"{s} -> {t}" for s, t in zip(shown, texts)) if all(isinstance(t, str) for t in texts + shown) else None
    ids = list(tok.encode(prompt)) if prompt else [int(getattr(tok, "eos_id", 0) or 0)]
    result = Generator(built, run_dir).generate([ids] * n, max_new_tokens=gen_cfg.max_new_tokens, seed=gen_cfg.seed)
    texts = result.decode()
    if not all(isinstance(t, str) for t in texts):
        return None
    return "\n---\n".join(prompt + t for t in texts)


def train(config, overrides=(), *, run_dir=None, resume: bool = False, overwrite: bool = False, registry=None, console=None,
          generate: bool = True, callbacks=()) -> TrainResult:
    """Train from a config file, a config dict, a validated config or (with ``resume``) a run directory.

    ``overrides`` are ``key=value`` strings; ``callbacks`` are extra Lightning callbacks (beside the
    config's ``callbacks`` list). Returns the run directory, the final validation metrics, the
    number of optimizer steps, the wall time and the generated sample (text models).
    """
    from genloom.core.plugins import get_registry

    t_start = time.perf_counter()
    registry = registry or get_registry()
    validated, run_dir, source_dir = resolve(config, overrides, run_dir=run_dir, registry=registry)
    rank0 = _is_rank_zero()
    # one writer per run directory; existing content is refused unless --overwrite or --resume
    lock = runio.prepare_run_dir(run_dir, overwrite=overwrite, resume=resume) if rank0 else None
    try:
        result = _train(validated, run_dir, registry, resume=resume, console=console, generate=generate, callbacks=callbacks,
                        t_start=t_start)
    except BaseException as exc:
        if lock is not None:
            lock.release_after_failure()
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, TrainingInterrupted):  # outside the training loop
            last = run_dir / runio.CHECKPOINTS / "last.ckpt"
            if last.exists():
                raise TrainingInterrupted(f"interrupted; {last} is kept: continue with `genloom train {run_dir} --resume`") from None
            raise TrainingInterrupted("interrupted before the first checkpoint; nothing to resume") from None
        raise
    if lock is not None:
        lock.release()
    return result


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the message names the checkpoint kept and the command that resumes."""


class RunFiles(L.Callback):
    """Writes config.yaml, plugins.json and the tokenizer files when training starts: after a resumed
    checkpoint has been restored into the model, so an incompatible override rewrites nothing."""

    def __init__(self, run_dir: Path, validated, registry, tokenizer):
        self.run_dir, self.validated, self.registry, self.tokenizer = run_dir, validated, registry, tokenizer
        self.written = False

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero and not self.written:
            runio.save_config(self.run_dir, self.validated, self.registry)
            runio.save_tokenizer(self.run_dir, self.tokenizer)
        self.written = True


class StopOnInterrupt(L.Callback):
    """The first Ctrl-C asks the run to stop at the next optimizer-step boundary (where a checkpoint
    is consistent); the second stops at once, keeping the last checkpoint written."""

    def __init__(self):
        self.requested = False

    def handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        import sys

        print("\ngenloom: interrupt received; saving a checkpoint after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.requested and getattr(pl_module, "batches_seen", 0) % max(1, trainer.accumulate_grad_batches) == 0:
            trainer.should_stop = True


def _train(validated, run_dir: Path, registry, *, resume: bool, console, generate: bool, callbacks, t_start: float) -> TrainResult:
    from rich.console import Console

    from genloom.core.model import assemble

    tcfg, ocfg, gcfg = validated.sections["trainer"], validated.sections["optimizer"], validated.sections["generate"]
    console = console or Console(stderr=False, highlight=False)
    rank0 = _is_rank_zero()
    say = console.print if rank0 else (lambda *a, **k: None)

    ckpt_dir = run_dir / CHECKPOINTS
    last = ckpt_dir / LAST
    ckpt_path = None
    if resume and last.exists():
        done = int(load_checkpoint(last).get("global_step", 0))  # verifies it too: fail before anything heavy is built
        if done >= tcfg.max_steps:
            raise CheckpointError(f"nothing to resume: {last} is already at step {done} and trainer.max_steps is {tcfg.max_steps}; "
                                  f"nothing was changed. Raise it to continue, e.g. `genloom train {run_dir} --resume "
                                  f"trainer.max_steps={max(2 * done, done + 1)}`")
        ckpt_path = last
    elif resume:
        if (run_dir / runio.WEIGHTS).exists():
            raise CheckpointError(f"'{run_dir}' holds trained weights but no checkpoint to resume from ({last} is missing); nothing "
                                  f"was changed. Pass --overwrite to train it again from scratch, or choose another --run-dir")
        say(f"[yellow]no checkpoint in {ckpt_dir}; starting from scratch[/yellow]")

    _quiet_lightning()
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    data = validated.to_saved()  # what is printed and saved: no value read from the environment
    if rank0:
        say(config_tree(data, f"config -> {run_dir}"))
    L.seed_everything(validated.run.seed, workers=True, verbose=False)

    tok_dir = run_dir / runio.TOKENIZER
    tokenizer = None
    if ckpt_path is not None and tok_dir.exists() and any(tok_dir.iterdir()):
        tokenizer = _load_tokenizer(validated, registry, tok_dir)  # the fitted tokenizer of the run, not a refit
    built = assemble(validated, registry, tokenizer=tokenizer)
    if built.data is None:
        raise ConfigError("the config has no 'data' node to train on", path="data")
    if "spawn" in str(tcfg.strategy) and not _picklable(built.model):
        raise ConfigError(f"strategy '{tcfg.strategy}' pickles the model into new processes, and this assembled model cannot be "
                          f"pickled (it holds the plugin registry); use trainer.strategy=ddp, which launches one process per "
                          f"device running the same command", path="trainer.strategy")
    n_params = sum(p.numel() for p in {id(p): p for p in built.model.parameters()}.values())
    say(f"model: {n_params / 1e6:.2f}M parameters; data prepared in {time.perf_counter() - t_start:.1f}s")

    module = GenloomModule(built.model, ocfg, tcfg, seed=validated.run.seed, config=data)
    dm = GenloomDataModule(built.data, built.model.tokenizer, built.ctx, seed=validated.run.seed, max_steps=tcfg.max_steps,
                           accumulate=tcfg.accumulate_grad_batches)
    n_train = len(dm.dataset("train"))
    n_val = len(dm.dataset("val"))
    total_batches = tcfg.max_steps * tcfg.accumulate_grad_batches

    from genloom.core.model import build_component

    stopper = StopOnInterrupt()
    callbacks = [build_component(spec, built.ctx) for spec in validated.lists.get("callbacks", [])] + list(callbacks)
    callbacks += [RunFiles(run_dir, validated, registry, built.model.tokenizer), stopper]
    callbacks.append(GuardedCheckpoint(dirpath=str(ckpt_dir), filename="step-{step}", save_top_k=0, save_last=True,
                                       every_n_train_steps=tcfg.checkpoint_every_steps, enable_version_counter=False))
    if tcfg.progress and rank0:
        callbacks.append(StepProgressBar(leave=True))
    logger = _make_logger(validated, run_dir)
    trainer = _trainer(
        max_steps=tcfg.max_steps,
        max_time=datetime.timedelta(minutes=tcfg.max_time_minutes) if tcfg.max_time_minutes else None,
        max_epochs=-1,
        precision=str(tcfg.precision),
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        strategy=tcfg.strategy,
        num_nodes=tcfg.num_nodes,
        gradient_clip_val=tcfg.gradient_clip_val,
        accumulate_grad_batches=tcfg.accumulate_grad_batches,
        val_check_interval=max(1, min(tcfg.val_every_steps * tcfg.accumulate_grad_batches, total_batches)),
        check_val_every_n_epoch=None,
        limit_val_batches=(tcfg.val_batches if tcfg.val_batches is not None else 1.0) if n_val else 0,
        log_every_n_steps=tcfg.log_every_steps,
        deterministic=tcfg.deterministic,
        enable_progress_bar=bool(tcfg.progress),
        enable_model_summary=False,
        enable_checkpointing=True,
        use_distributed_sampler=False,  # TrainBatches and EvalShard shard by rank themselves
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=callbacks,
        plugins=[SafeCheckpointIO()],
    )
    say(f"training on {n_train} train / {n_val} val samples; global batch {int(built.data.batch_size) * trainer.world_size} x "
        f"{tcfg.accumulate_grad_batches} accumulation; {'resuming from ' + str(ckpt_path) if ckpt_path else 'from scratch'}")
    t_fit = time.perf_counter()
    import signal
    import threading

    run_files = next(c for c in callbacks if isinstance(c, RunFiles))
    hint = f"continue with `genloom train {run_dir} --resume`"
    previous = signal.signal(signal.SIGINT, stopper.handler) if threading.current_thread() is threading.main_thread() else None
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
    except SystemExit:
        if stopper.requested:  # Lightning exits on a second Ctrl-C; the last checkpoint written stays
            raise TrainingInterrupted(f"training stopped at once at step {trainer.global_step}; the last checkpoint written is kept; {hint}") from None
        raise
    except (RuntimeError, ValueError, KeyError) as exc:
        if ckpt_path is not None and not run_files.written:  # failed while restoring the checkpoint: nothing was rewritten
            raise CheckpointError(f"checkpoint '{ckpt_path}' does not match the model or optimizer built from the config "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); the run directory is unchanged") from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    fit_seconds = time.perf_counter() - t_fit

    if tcfg.checkpoint_every_steps and trainer.global_step % tcfg.checkpoint_every_steps:
        check_finite_parameters(module, trainer.global_step, last)
        trainer.save_checkpoint(str(last), weights_only=False)  # the full final state, so --resume with a larger max_steps continues from here
    if stopper.requested or trainer.interrupted:
        if last.exists():
            raise TrainingInterrupted(f"training interrupted at step {trainer.global_step}; checkpoint saved to {last}; {hint}")
        raise TrainingInterrupted(f"training interrupted before its first step; nothing to resume yet ({hint} starts it again)")
    if n_val and (module.last_val_step != trainer.global_step or tcfg.val_batches is not None):
        trainer.limit_val_batches = 1.0  # the final figures cover the whole held-out split
        trainer.validate(module, datamodule=dm, verbose=False)
    metrics = dict(module.val_metrics)
    weights = None
    sample = None
    sharded = "fsdp" in str(tcfg.strategy).lower()
    full_state = trainer.strategy.lightning_module_state_dict() if sharded else None  # a collective: every rank calls it
    if trainer.is_global_zero:
        model = _unsharded_copy(full_state, validated, registry, built) if sharded else built.model
        model.cpu()
        weights = runio.save_weights(run_dir, model)
        seconds = time.perf_counter() - t_start
        summary = {"global_step": trainer.global_step, "fit_seconds": fit_seconds, "total_seconds": seconds, "parameters": n_params,
                   "val": metrics}
        runio.write_text(run_dir / METRICS, json.dumps(summary, indent=2))
        _print_metrics(say, metrics, trainer.global_step, fit_seconds)
        if generate:
            sample = _sample(built, gcfg, run_dir)
            if sample is not None:
                say("[bold]sample:[/bold]")
                console.print(sample, markup=False, highlight=False)
    return TrainResult(run_dir=run_dir, metrics=metrics, global_step=trainer.global_step, seconds=time.perf_counter() - t_start,
                       sample=sample, weights=weights)


def _trainer(**kwargs):
    """``lightning.Trainer(**kwargs)``; a setting Lightning refuses (an accelerator whose package is
    missing, an unknown strategy or precision) is a config error naming the trainer field."""
    try:
        return L.Trainer(**kwargs)
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fields = ("accelerator", "strategy", "precision", "devices", "num_nodes", "gradient_clip_val", "accumulate_grad_batches")
        field = next((f for f in fields if f in message.lower()), None)
        if field is None and isinstance(exc, ImportError):
            field = "accelerator"
        raise ConfigError(f"Lightning refused the trainer settings: {type(exc).__name__}: {message}",
                          path=f"trainer.{field}" if field else "trainer") from None


def _unsharded_copy(state, validated, registry, built):
    """A plain copy of the model holding the full state dict gathered from the shards (FSDP)."""
    from genloom.core.model import assemble

    copy = assemble(validated, registry, data=False, tokenizer=built.model.tokenizer).model
    copy.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return copy


def _print_metrics(say, metrics: dict, step: int, seconds: float) -> None:
    from rich.table import Table

    table = Table(title=f"validation after {step} steps ({seconds / 60:.1f} min of training)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(metrics):
        if not k.startswith("total_"):
            table.add_row(f"val/{k}", f"{metrics[k]:.4f}")
    say(table)


def _picklable(obj) -> bool:
    import pickle

    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True
