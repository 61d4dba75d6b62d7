"""Train the three forecasters at toy scale and print the test-split table of docs/forecasting.md.

    python tests/plugins/itransformer/measure_forecasting.py [--seeds 0 1 2]

Each forecaster is assembled through the registry from the same nodes as its configs/*.yaml and
trained with ``fit_forecaster`` (AdamW, cosine decay, the weights of the best validation MSE are
kept); baselines are fitted on the training split. MSE/MAE are on the data set's normalised
scale (per-variate mean/std of the training part of the timeline).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from genloom.plugins.baseline.forecast import baseline_scores, evaluate, fit_forecaster, model_predictor
from genloom.testing import tiny_model

MACRODATA = {"name": "macrodata", "transform": "levels", "lookback": 16, "horizon": 4}
SUNSPOTS = {"name": "sunspots", "lookback": 32, "horizon": 8}

#: name -> (config nodes, training settings); the same settings the slow tests use with seed 0
FORECASTERS = {
    "itransformer": ({
        "data": MACRODATA,
        "tokenizer": {"name": "variate"},
        "head": {"name": "forecast"},
        "backbone": {"name": "itransformer", "d_model": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.1},
        "objective": {"name": "mse"},
    }, {"steps": 300, "lr": 1e-3, "batch_size": 32, "eval_every": 10}),
    "s-mamba": ({
        "data": MACRODATA,
        "tokenizer": {"name": "variate"},
        "head": {"name": "forecast"},
        "backbone": {"name": "s-mamba", "d_model": 32, "n_layers": 1, "dropout": 0.1,
                     "mamba_options": {"d_state": 16, "d_conv": 2, "expand": 1}},
        "objective": {"name": "mse"},
    }, {"steps": 200, "lr": 1e-3, "batch_size": 32, "eval_every": 10}),
    "ar-net": ({
        "data": SUNSPOTS,
        "tokenizer": {"name": "variate"},
        "head": {"name": "ar-net"},
        "backbone": {"name": "ar-net"},
        "objective": {"name": "ar-net", "sparsity": 0.1},
    }, {"steps": 800, "lr": 3e-3, "batch_size": 64, "eval_every": 20}),
}


def train_forecaster(name: str, seed: int = 0):
    """Assemble and train forecaster ``name``; returns (built, best validation scores, test scores, seconds)."""
    nodes, settings = FORECASTERS[name]
    torch.manual_seed(seed)
    built = tiny_model(base=nodes, data=True)
    start = time.perf_counter()
    best = fit_forecaster(built.model, built.data, seed=seed, **settings)
    test = evaluate(model_predictor(built.model), built.data, "test")
    return built, best, test, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", default=list(FORECASTERS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.only:
        scores, seconds = [], []
        built = None
        for seed in args.seeds:
            built, best, test, took = train_forecaster(name, seed)
            scores.append(test)
            seconds.append(took)
            print(f"{name} seed {seed}: val mse {best['mse']:.3f} (step {best['step']}), test mse {test['mse']:.3f} mae {test['mae']:.3f}, {took:.1f}s", flush=True)
        data_name = built.data.name
        mse = [s["mse"] for s in scores]
        mae = [s["mae"] for s in scores]
        spread = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        rows.append((data_name, name, f"{statistics.mean(mse):.3f} ± {spread(mse):.3f}", f"{statistics.mean(mae):.3f} ± {spread(mae):.3f}", f"{statistics.mean(seconds):.0f}"))
        for base, s in baseline_scores(built.data, instance_norm_linear=True).items():
            row = (data_name, base, f"{s['mse']:.3f}", f"{s['mae']:.3f}", "-")
            if row not in rows:
                rows.append(row)
    print("\n| data | model | test MSE | test MAE | train s |\n| --- | --- | --- | --- | --- |")
    for row in sorted(rows, key=lambda r: (r[0], r[1])):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
