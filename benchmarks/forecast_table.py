"""Train forecasters from their configs and score them with the baselines on rolling test cut-offs.

    python benchmarks/forecast_table.py configs/autoformer.yaml [configs/informer.yaml ...] [--steps N] [--step 4] [--seeds 0]
    python benchmarks/forecast_table.py --peers configs/itransformer.yaml ... [--seeds 0,1,2]   (needs the compare extra)

Each config is trained with ``fit_forecaster`` (AdamW, cosine decay, the weights of the best
validation MSE kept; ``--steps`` or the config's ``trainer.max_steps``), then evaluated with the
harness (``genloom.toolkit.forecasting.evaluate``) at every ``--step``-th test cut-off beside
seasonal naive, linear, ARIMA and ETS refitted on the same history. Prints one markdown table per
data set (normalised scale; per-step MSE; wall seconds: training for models, all fits for baselines).
``--peers`` hands the arguments to ``benchmarks/forecast_peers.py``: each model beside its
neuralforecast twin over several seeds (``pip install -c constraints.txt -e ".[compare]"``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from genloom.plugins.baseline.forecast import fit_forecaster
from genloom.testing import tiny_model
from genloom.toolkit import forecasting as fc


def main(argv=None):
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--peers" in argv:
        sys.path.insert(0, str(Path(__file__).parent))
        from forecast_peers import main as peers_main

        return peers_main([a for a in argv if a != "--peers"])
    parser = argparse.ArgumentParser()
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--step", type=int, default=4, help="test cut-offs apart")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--baselines", default="seasonal-naive,linear,arima,ets", help="comma list, or none")
    args = parser.parse_args(argv)
    baselines = [b for b in args.baselines.split(",") if b and b != "none"]
    torch.set_num_threads(1)
    tables = {}
    for path in args.configs:
        for seed in [int(s) for s in args.seeds.split(",")]:
            torch.manual_seed(seed)
            built = tiny_model(path, data=True)
            data, model = built.data, built.model
            optimizer = built.model.config.sections.get("optimizer")
            steps = args.steps or built.model.config.sections["trainer"].max_steps
            started = time.perf_counter()
            fit_forecaster(model, data, steps=steps, lr=getattr(optimizer, "lr", 1e-3), seed=seed)
            seconds = time.perf_counter() - started
            info = data.info
            values = data.values.double().numpy()
            first = max(info["borders"]["test"][0], info["lookback"])
            origins = fc.rolling_origins(len(values), info["horizon"], first, step=args.step)
            season = max(1, min(info["season"], info["lookback"]))
            forecasters = {f"{path.split('/')[-1][:-5]} (seed {seed})": fc.model_forecaster(model, info["lookback"])}
            key = info["name"]
            if key not in tables:
                forecasters.update(fc.baselines(info["horizon"], season, info["lookback"], baselines))
            table = fc.evaluate(values, forecasters, origins, season=season, data=key)
            table.rows[0].seconds = seconds
            if key in tables:
                tables[key].rows.insert(len(tables[key].rows) - len(baselines), table.rows[0])
            else:
                tables[key] = table
    for key, table in tables.items():
        print(f"\n{key}: {len(table.origins)} cut-offs, horizon {table.horizon}\n")
        print(table.to_markdown())


if __name__ == "__main__":
    main()
