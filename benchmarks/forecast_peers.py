"""genloom forecasters beside their neuralforecast twins, on the same rolling origins, over several seeds.

    pip install -c constraints.txt -e ".[compare]"
    python benchmarks/forecast_peers.py configs/itransformer.yaml configs/autoformer.yaml configs/informer.yaml \
        [--seeds 0,1,2] [--step 4] [--steps N] [--baselines seasonal-naive,linear,arima,ets] [--csv OUT.csv]

(also ``python benchmarks/forecast_table.py --peers CONFIG ...``). For every config and seed:
the genloom model is trained with ``fit_forecaster`` (the config's ``trainer.max_steps`` unless
``--steps``; best validation weights kept) and its neuralforecast twin
(``genloom.toolkit.forecasting_peers.twin_spec``: same input size, horizon, width, layers, heads,
feed-forward width, dropout, loss, optimiser, schedule, steps, batch and validation split) is fitted
once on the same training + validation splits. Both, and the baselines refitted on the expanding
history, are scored by ``genloom.toolkit.forecasting.evaluate`` at every ``--step``-th test cut-off.

Prints one markdown table per data set: mean ± standard deviation over seeds of MSE, MAE, MASE and
the per-step MSE, and per metric whether genloom is better, within noise or worse than the twin
(worse: its mean is higher by more than two standard errors of the difference of the means).
Wall seconds are printed for information only.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings

import numpy as np
import torch

from genloom.plugins.baseline.forecast import fit_forecaster
from genloom.testing import tiny_model
from genloom.toolkit import forecasting as fc
from genloom.toolkit import forecasting_peers as peers

METRICS = ("mse", "mae", "mase")


def _quiet():
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "neuralforecast"):
        logging.getLogger(name).setLevel(logging.ERROR)


def verdict(ours: list[float], theirs: list[float]) -> str:
    """'better', 'within noise' or 'worse' for genloom (lower is better), at two standard errors of the difference."""
    n, m = len(ours), len(theirs)
    if n < 2 or m < 2:
        return "n/a (one seed)"
    spread = math.sqrt(np.var(ours, ddof=1) / n + np.var(theirs, ddof=1) / m)
    difference = float(np.mean(ours) - np.mean(theirs))
    if abs(difference) <= 2 * spread:
        return "within noise"
    return "better" if difference < 0 else "worse"


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def compare(path: str, seeds: list[int], *, step: int, steps: int | None, baselines: list[str]):
    """Train and score one config and its twin over ``seeds``; returns (data name, origins, rows, twin spec)."""
    rows: dict[str, dict[str, list]] = {}
    spec = None
    for seed in seeds:
        torch.manual_seed(seed)
        built = tiny_model(path, data=True)
        data, model = built.data, built.model
        optimizer = model.config.sections.get("optimizer")
        lr = getattr(optimizer, "lr", 1e-3)
        max_steps = steps or model.config.sections["trainer"].max_steps
        info = data.info
        values = data.values.double().numpy()
        first = max(info["borders"]["test"][0], info["lookback"])
        origins = fc.rolling_origins(len(values), info["horizon"], first, step=step)
        season = max(1, min(info["season"], info["lookback"]))
        started = time.perf_counter()
        fit_forecaster(model, data, steps=max_steps, lr=lr, seed=seed)
        ours_seconds = time.perf_counter() - started
        spec = peers.twin_spec(model, data, steps=max_steps, lr=lr)
        peer = peers.peer_forecaster(spec, data, seed=seed)
        name = model.config.components["backbone"].record.name
        forecasters = {f"genloom {name}": fc.model_forecaster(model, info["lookback"]), f"neuralforecast {spec.model}": peer}
        if seed == seeds[0] and baselines:
            forecasters.update(fc.baselines(info["horizon"], season, info["lookback"], baselines))
        table = fc.evaluate(values, forecasters, origins, season=season, data=info["name"])
        for row in table.rows:
            entry = rows.setdefault(row.name, {"per_step": [], "seconds": [], **{m: [] for m in METRICS}})
            overall = row.overall()
            for metric in METRICS:
                entry[metric].append(overall[metric])
            entry["per_step"].append(row.per_step["mse"])
            entry["seconds"].append(ours_seconds if row.name.startswith("genloom") else row.seconds)
    return info["name"], origins, rows, spec


def to_markdown(data: str, origins, rows, seeds) -> str:
    names = list(rows)
    ours = next(n for n in names if n.startswith("genloom"))
    theirs = next(n for n in names if n.startswith("neuralforecast"))
    lines = [f"| data (cut-offs, horizon) | forecaster | seeds | MSE | MAE | MASE | MSE per step | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, name in enumerate(names):
        entry = rows[name]
        per_step = " ".join(f"{v:.3f}" for v in np.mean(entry["per_step"], axis=0))
        label = f"{data} ({len(origins)}, {origins[0].horizon})" if i == 0 else ""
        lines.append(f"| {label} | {name} | {len(entry['mse'])} | " + " | ".join(_cell(entry[m]) for m in METRICS)
                     + f" | {per_step} | {np.mean(entry['seconds']):.0f} |")
    verdicts = ", ".join(f"{m.upper()} {verdict(rows[ours][m], rows[theirs][m])}" for m in METRICS)
    lines.append(f"\n{ours} against {theirs} (seeds {','.join(map(str, seeds))}): {verdicts}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--step", type=int, default=4, help="test cut-offs apart")
    parser.add_argument("--steps", type=int, default=None, help="training steps for both sides (default: the config's)")
    parser.add_argument("--baselines", default="seasonal-naive,linear,arima,ets")
    parser.add_argument("--csv", default=None, help="write every seed's overall figures here")
    args = parser.parse_args(argv)
    peers.require_neuralforecast()
    _quiet()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    baselines = [b for b in args.baselines.split(",") if b and b != "none"]
    csv_lines = ["data,forecaster,seed,metric,value"]
    for path in args.configs:
        data, origins, rows, spec = compare(path, seeds, step=args.step, steps=args.steps, baselines=baselines)
        print(f"\n{data}: {len(origins)} cut-offs {args.step} apart, horizon {origins[0].horizon}; "
              f"twin {spec.model} (differences: {'; '.join(spec.differences)})\n")
        print(to_markdown(data, origins, rows, seeds), flush=True)
        for name, entry in rows.items():
            for metric in METRICS:
                for seed, value in zip(seeds, entry[metric]):
                    csv_lines.append(f"{data},{name},{seed},{metric},{value:.6g}")
    if args.csv:
        with open(args.csv, "w") as handle:
            handle.write("\n".join(csv_lines) + "\n")


if __name__ == "__main__":
    main()
