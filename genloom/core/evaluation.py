"""``genloom evaluate RUN`` for every model: its objective's figures over a whole held-out split.

An objective that has its own evaluation procedure (``evaluate_run(gen, options)``: forecasters'
rolling origins and baselines) is handed the run. Every other run is evaluated the way training
validates it: the data set named in the run's config is rebuilt (same splits, same tokenizer), the
split is served in order by the training data module, and :class:`~genloom.core.training.MetricSums`
adds up ``model.loss(batch)`` under the validation seed, so ``split=val`` reproduces the final
validation figures of ``metrics.json`` and ``split=test`` gives the untouched test split's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from genloom.core.errors import ConfigError

OPTIONS = ("split", "max_batches", "out", "overwrite")
SPLITS = ("test", "val", "train")


def evaluate_split(gen, split: str = "test", max_batches: int | None = None, progress: bool = True) -> dict[str, float]:
    """The objective's figures over ``split`` of the run's data set (all of it, or its first ``max_batches`` batches)."""
    from genloom.core.model import build_component
    from genloom.core.training import VALIDATION_SEED_OFFSET, GenloomDataModule, MetricSums

    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}", path="split")
    config = gen.model.config
    spec = config.components.get("data") if config is not None else None
    if spec is None:
        raise ConfigError("the run's config has no data node, so there is no held-out split to evaluate on", path="data")
    source = build_component(spec, gen.ctx)
    module = GenloomDataModule(source, gen.tokenizer, gen.ctx, seed=config.run.seed)
    try:
        loader = module._eval_loader(split)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"data set '{spec.record.name}' has no usable '{split}' split ({exc})", path="split") from None
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    if total == 0:
        raise ConfigError(f"the '{split}' split of data set '{spec.record.name}' is empty", path="split")
    sums = MetricSums()
    model = gen.model
    was_training = model.training
    model.eval()
    bar = _progress(progress)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), bar:
            torch.manual_seed(config.run.seed + VALIDATION_SEED_OFFSET)
            task = bar.add_task(f"evaluating on {split}", total=total)
            for i, batch in enumerate(loader):
                if i >= total:
                    break
                sums.add(model, batch)
                bar.advance(task)
    finally:
        model.train(was_training)
    return sums.result()


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True, disable=not enabled)


def evaluate_run(gen, options: dict, run_path=None) -> str:
    """What ``genloom evaluate`` prints: the objective's own procedure, else the split's figures as a
    markdown table (and, with ``out=FILE``, as JSON, written atomically; an existing file is kept
    unless ``overwrite=true``)."""
    own = getattr(gen.model.objective, "evaluate_run", None)
    if own is not None:
        return own(gen, options)
    unknown = [k for k in options if k not in OPTIONS]
    if unknown:
        raise ConfigError(f"unknown evaluate option(s) {', '.join(unknown)} (allowed: {', '.join(OPTIONS)})")
    split = str(options.get("split", "test"))
    max_batches = options.get("max_batches")
    if max_batches is not None:
        try:
            max_batches = int(max_batches)
        except ValueError:
            raise ConfigError(f"max_batches must be an integer >= 1, got {max_batches!r}", path="max_batches") from None
        if max_batches < 1:
            raise ConfigError(f"max_batches must be an integer >= 1, got {max_batches}", path="max_batches")
    overwrite = str(options.get("overwrite", "false")).lower()
    if overwrite not in ("true", "false"):
        raise ConfigError(f"overwrite must be true or false, got {overwrite!r}", path="overwrite")
    out = options.get("out")
    if out is not None and Path(out).exists() and overwrite != "true":
        raise ConfigError(f"'{out}' already exists; pass overwrite=true to replace it, or choose another out=", path="out")
    metrics = evaluate_split(gen, split, max_batches)
    summarise = getattr(gen.model.objective, "summarise", None)
    if summarise is not None:  # figures the objective derives from the split's sums (e.g. a ratio of two totals)
        metrics = summarise(metrics)
    rows = [f"| {k} | {v:.6g} |" for k, v in metrics.items()]
    what = f"split '{split}'" + (f", first {max_batches} batches" if max_batches else "")
    table = "\n".join([f"{run_path or 'run'}: {what}", "", "| metric | value |", "| --- | --- |", *rows])
    if out is not None:
        from genloom.core import runio

        runio.write_text(Path(out), json.dumps({"split": split, "max_batches": max_batches, "metrics": metrics}, indent=2))
        table += f"\n\nwrote {out}"
    return table
