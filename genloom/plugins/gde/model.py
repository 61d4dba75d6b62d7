"""GDE: a DeepSets encoder of sample sets and a conditional flow-matching generator.

One training step (``Gde.loss``): z = encoder(set) (B, latent); for the target draws x_1 (B, M) of
the same distributions, x_0 ~ N(0, 1), t ~ U(0, 1), x_t = (1 - t) x_0 + t x_1; the loss is the mean
of (v(x_t, t, z) - (x_1 - x_0))^2. Sampling integrates dx/dt = v(x, t, z) from t = 0 to 1 with
Euler steps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from genloom.core.data import DataSource
from genloom.core.model import Backbone, Head, Objective
from genloom.core.pattern import FULL
from genloom.plugins.gde import DeepSetsConfig, GaussianSetsConfig, GdeFlowHeadConfig, GdeObjectiveConfig
from genloom.toolkit.amortized import DeepSetEncoder, gaussian_sets, mlp, spearman, w2_gaussian


class GaussianSets(torch.utils.data.Dataset):
    def __init__(self, config: GaussianSetsConfig, size: int, split_index: int):
        self.config, self.size, self.split_index = config, size, split_index

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        c = self.config
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([c.seed, self.split_index, int(i)]).generate_state(1)[0]))
        draws, mean, std = gaussian_sets(1, 2 * c.set_size, gen, (c.mean_low, c.mean_high), (c.std_low, c.std_high), dtype=torch.float32)
        return {"set": draws[0, :c.set_size], "target": draws[0, c.set_size:], "mean": mean[0], "std": std[0]}


class GaussianSetsData(DataSource):
    SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}

    def __init__(self, config: GaussianSetsConfig):
        self.config = config
        self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
        self.info = {"modality": "tabular", "name": "gaussian-sets", "set_size": config.set_size}

    def load(self, split: str, tokenizer=None, ctx=None):
        if split not in self.SPLIT_INDEX:
            raise ValueError(f"unknown split '{split}' (known: train, val, test)")
        size = self.config.train_sets if split == "train" else self.config.eval_sets
        return GaussianSets(self.config, size, self.SPLIT_INDEX[split])

    def tasks(self, split: str, count: int | None = None) -> dict[str, torch.Tensor]:
        ds = self.load(split)
        items = [ds[i] for i in range(len(ds) if count is None else min(count, len(ds)))]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def build_data(config: GaussianSetsConfig, ctx=None) -> GaussianSetsData:
    return GaussianSetsData(config)


class GdeFlowHead(Head):
    """``embed(x (B, N))`` -> (B, N, d_model); ``velocity(x_t, t, z)``; ``sample(z, n)``."""

    def __init__(self, d_model: int, latent: int, hidden: int, sample_steps: int):
        super().__init__()
        self.sample_in = mlp(1, d_model, d_model)
        self.velocity_net = mlp(2 + latent, hidden, 1, 3)
        self.latent, self.sample_steps = latent, sample_steps

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.sample_in(x.to(self.sample_in[0].weight.dtype)[..., None])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The set embedding z (B, latent) from the backbone's output (B, N, d_model)."""
        return h[:, 0, :self.latent]

    def velocity(self, x_t, t, z):
        """v(x_t, t, z) for x_t, t (B, M) and z (B, latent): (B, M)."""
        feats = torch.cat([x_t[..., None], t[..., None], z[:, None].expand(-1, x_t.shape[1], -1)], -1)
        return self.velocity_net(feats)[..., 0]

    @torch.no_grad()
    def sample(self, z: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, n) draws: Euler integration of dx/dt = v(x, t, z) from x_0 ~ N(0, 1)."""
        x = torch.randn(z.shape[0], n, generator=generator, dtype=z.dtype, device=z.device)
        dt = 1.0 / self.sample_steps
        for i in range(self.sample_steps):
            t = torch.full_like(x, i * dt)
            x = x + dt * self.velocity(x, t, z)
        return x


class DeepSets(Backbone):
    """Every output position holds rho(mean_n phi(h_n)): the set's embedding."""

    patterns = frozenset({"full"})

    def __init__(self, cfg: DeepSetsConfig):
        super().__init__()
        self.encoder = DeepSetEncoder(cfg.d_model, cfg.d_model, cfg.d_model, cfg.layers, pool="mean")

    def forward(self, h, *, pattern=FULL, state=None, valid=None):
        if state is not None:
            raise ValueError("a set encoder has no incremental state")
        return self.encoder(h, valid)[:, None].expand(-1, h.shape[1], -1)

    def init_state(self, batch_size, capacity=256, device=None, dtype=None):
        raise NotImplementedError("a set encoder has no incremental state")


class Gde(Objective):
    pattern = FULL

    def __init__(self, eval_samples: int = 512):
        super().__init__()
        self.eval_samples = eval_samples

    def embed(self, model, samples: torch.Tensor) -> torch.Tensor:
        """The embedding z (B, latent) of sets of samples (B, N)."""
        return model.head(model.backbone(model.head.embed(samples), pattern=FULL))

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        z = self.embed(model, batch["set"])
        x1 = batch["target"].to(z.dtype)
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], 1, dtype=x1.dtype, device=x1.device).expand_as(x1)
        x_t = (1 - t) * x0 + t * x1
        loss = ((model.head.velocity(x_t, t, z) - (x1 - x0)) ** 2).mean()
        return {"loss": loss}

    def evaluate_run(self, gen, options: dict) -> str:
        """``genloom evaluate RUN [sets=N]``: latent geometry against exact W2 and the generator's moments."""
        from genloom.core.errors import ConfigError
        from genloom.core.model import build_component

        unknown = [k for k in options if k != "sets"]
        if unknown:
            raise ConfigError(f"unknown evaluate option(s) {', '.join(unknown)} (allowed: sets)")
        spec = gen.model.config.components.get("data") if gen.model.config is not None else None
        data = build_component(spec, gen.ctx) if spec is not None else None
        if not isinstance(data, GaussianSetsData):
            raise ConfigError("this evaluation needs the run's data set to be gaussian-sets (its exact W2 is the reference)", path="data")
        figures = embedding_figures(gen.model.eval(), data, int(options.get("sets", 128)), self.eval_samples)
        rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in figures.items())
        return f"gaussian-sets test distributions\n\n| figure | value |\n| --- | --- |\n{rows}\n"


@torch.no_grad()
def embedding_figures(model, data: GaussianSetsData, count: int = 128, samples: int = 512, seed: int = 0) -> dict[str, float]:
    """``w2_spearman``: rank correlation of latent distances with exact W2 over all pairs of test
    distributions; ``resampling_gap``: mean latent distance between the embeddings of a
    distribution's two sets over the mean distance between different distributions (0: invariant
    to resampling); ``mean_error`` / ``std_error``: mean absolute error of the generated samples'
    mean and std against the true ones."""
    tasks = data.tasks("test", count)
    objective = model.objective
    dtype = next(model.parameters()).dtype
    z = objective.embed(model, tasks["set"].to(dtype)).double()
    z_other = objective.embed(model, tasks["target"].to(dtype)).double()
    iu = torch.triu_indices(len(z), len(z), offset=1)
    latent = torch.cdist(z, z)[iu[0], iu[1]]
    mean, std = tasks["mean"].double(), tasks["std"].double()
    w2 = w2_gaussian(mean[iu[0]], std[iu[0]], mean[iu[1]], std[iu[1]])
    generated = model.head.sample(z.to(dtype), samples, generator=torch.Generator().manual_seed(seed)).double()
    return {
        "w2_spearman": spearman(latent.numpy(), w2.numpy()),
        "resampling_gap": float((z - z_other).norm(dim=-1).mean() / latent.mean()),
        "mean_error": float((generated.mean(1) - mean).abs().mean()),
        "std_error": float((generated.std(1) - std).abs().mean()),
    }


def build_head(config: GdeFlowHeadConfig, ctx=None) -> GdeFlowHead:
    if config.latent is None or config.d_model is None:
        config.bind(ctx)
    return GdeFlowHead(config.d_model, config.latent, config.hidden, config.sample_steps)


def build_backbone(config: DeepSetsConfig, ctx=None) -> DeepSets:
    return DeepSets(config)


def build_objective(config: GdeObjectiveConfig, ctx=None) -> Gde:
    return Gde(config.eval_samples)
