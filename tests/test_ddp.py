"""DDP with 2 CPU processes (gloo, Lightning's `ddp` strategy launching a subprocess per rank) matches a
single process that trains on the same global batch; every rank draws its own noise."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

CONFIG = {
    "seed": 0,
    "logger": "csv",
    "data": {"name": "pystdlib", "seq_len": 32, "batch_size": 8, "max_train_bytes": 40_000, "max_eval_bytes": 3_000},
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2},
    "objective": {"name": "next-token"},
    "decoder": {"name": "sampling"},
    "optimizer": {"lr": 3e-3, "warmup_steps": 2},
    "trainer": {"max_steps": 6, "val_every_steps": 6, "checkpoint_every_steps": 6, "progress": False, "threads": 1,
                "log_every_steps": 1, "accelerator": "cpu"},
    "generate": {"max_new_tokens": 4},
}


def _losses(run_dir: Path) -> list[float]:
    path = max((run_dir / "logs").rglob("metrics.csv"))
    return [float(r["train/loss"]) for r in csv.DictReader(open(path)) if r.get("train/loss")]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process_on_the_same_global_batch(tmp_path):
    from safetensors.torch import load_file

    from genloom.core.training import train

    torch.manual_seed(0)
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    env.pop("LOCAL_RANK", None)
    ddp = subprocess.run([sys.executable, "-m", "genloom.core.train_cli", str(cfg), "--run-dir", str(tmp_path / "ddp"), "--no-sample",
                          "trainer.strategy=ddp", "trainer.devices=2", "data.batch_size=4"],
                         env=env, capture_output=True, text=True, timeout=400)
    assert ddp.returncode == 0, ddp.stderr[-4000:]

    single = train(str(cfg), run_dir=tmp_path / "single", generate=False)  # batch 8 on one process = 2 x 4

    l_ddp, l_one = _losses(tmp_path / "ddp"), _losses(tmp_path / "single")
    assert len(l_ddp) == len(l_one) == 6
    for step, (a, b) in enumerate(zip(l_ddp, l_one), 1):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), f"step {step}: ddp {a} vs single {b}"
    assert l_ddp[-1] < l_ddp[0]  # it trained

    wa, wb = load_file(str(tmp_path / "ddp" / "model.safetensors")), load_file(str(tmp_path / "single" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)

    # validation sums over uneven rank shards add up to exactly the single-process whole-split figures
    import json

    vd = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["val"]
    assert vd["total_tokens"] == single.metrics["total_tokens"] and vd["total_bytes"] == single.metrics["total_bytes"]
    assert vd["bits_per_byte"] == pytest.approx(single.metrics["bits_per_byte"], rel=1e-4)

    # the checkpoint keeps each rank's own random state, and they differ
    from genloom.core.training import load_checkpoint

    states = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt")["genloom"]["rng_by_rank"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])


def test_each_rank_draws_its_own_noise_reproducibly():
    from types import SimpleNamespace

    from genloom.core.training import GenloomModule

    def first_draws(rank: int, world: int = 3) -> torch.Tensor:
        module = GenloomModule(torch.nn.Linear(1, 1), None, SimpleNamespace(compile=False), seed=0)
        module._trainer = SimpleNamespace(global_rank=rank, world_size=world)
        torch.manual_seed(0)  # what seed_everything gives every rank
        module.on_train_start()
        return torch.rand(8)

    torch.manual_seed(0)
    seed_stream = torch.rand(8)
    assert torch.equal(first_draws(0), seed_stream)  # rank 0 (and a single process) keeps the seed's stream
    draws = [first_draws(r) for r in range(3)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2]) and not torch.equal(draws[0], draws[2])
    assert torch.equal(first_draws(1), draws[1])  # reproducible
