"""configs/var.yaml validates; a tiny run trains, reloads from its directory and writes a PNG grid."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from genloom.core import config as config_mod

ROOT = Path(__file__).resolve().parents[3]


def test_shipped_config_validates():
    validated = config_mod.load(ROOT / "configs" / "var.yaml")
    assert validated.components["objective"].record.name == "next-scale"
    assert validated.components["tokenizer"].config.scales == (1, 2, 3, 4)


@pytest.mark.slow
def test_train_reload_and_generate_a_png_grid(tmp_path):
    from genloom.core import generate_cli
    from genloom.core.training import train
    from genloom.plugins.var.grid import read_png

    torch.manual_seed(0)
    overrides = [
        "tokenizer.fit_steps=20", "tokenizer.hidden_channels=8", "tokenizer.latent_channels=8",
        "backbone.d_model=32", "backbone.n_layers=1", "backbone.n_heads=2",
        "trainer.max_steps=6", "trainer.val_every_steps=6", "trainer.val_batches=2", "trainer.progress=false",
        "logger=none", "data.batch_size=16",
    ]
    result = train(str(ROOT / "configs" / "var.yaml"), overrides, run_dir=tmp_path / "run", generate=False)
    run_dir = Path(result.run_dir)
    assert (run_dir / "tokenizer" / "var_vq.safetensors").exists()
    out = tmp_path / "grid.png"
    args = argparse.Namespace(run=str(run_dir), overrides=[f"out={out}", "num_samples=2", "seed=3"], json=False)
    assert generate_cli.main(args) == 0
    pixels = read_png(out)
    # 2 rows x 10 classes of 8x8 digits enlarged 4x to 32x32, 1-pixel borders
    assert pixels.shape == (2 * 33 + 1, 10 * 33 + 1)
    # the reloaded tokenizer is the fitted one: same ids as the run's own tokenizer
    import genloom

    gen = genloom.load(run_dir)
    assert bool(gen.tokenizer.fitted)
    sample = gen.tokenizer.decode(list(range(30)))
    assert sample.shape == (1, 8, 8)
