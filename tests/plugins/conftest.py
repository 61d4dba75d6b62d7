"""Plugin tests: makes the shared helper modules of this folder (``recurrent_helpers``) importable
from every plugin's test folder."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def frozen_lm_run(tmp_path_factory):
    """A tiny language model trained for a few steps through genloom's own training path (the frozen LM of TEMPO and AutoTimes)."""
    from genloom.core.training import train

    root = tmp_path_factory.mktemp("frozen-lm")
    corpus = root / "corpus.txt"
    corpus.write_text("".join(f"segment {i}: the series rises and falls, season {i % 12}.\n" for i in range(300)))
    run_dir = root / "run"
    train({
        "seed": 0, "logger": "none",
        "data": {"name": "text-files", "paths": [str(corpus)], "seq_len": 16, "batch_size": 4},
        "tokenizer": {"name": "bytes"}, "head": {"name": "lm"},
        "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
        "objective": {"name": "next-token"},
        "optimizer": {"lr": 3e-3, "warmup_steps": 1},
        "trainer": {"max_steps": 4, "val_every_steps": 4, "checkpoint_every_steps": 4, "progress": False, "threads": 1, "val_batches": 1},
    }, run_dir=run_dir, generate=False)
    return run_dir
