"""Helpers of the reliability suite: run the real CLI, check that a failure is clean, snapshot a
run directory, and the sources of a distribution of misbehaving plugins."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: A run small enough to train in a few seconds on one core.
TINY = {
    "seed": 0,
    "logger": "none",
    "data": {"name": "pystdlib", "seq_len": 16, "batch_size": 4, "max_train_bytes": 8_000, "max_eval_bytes": 1_000},
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
    "objective": {"name": "next-token"},
    "decoder": {"name": "sampling"},
    "optimizer": {"lr": 3e-3, "warmup_steps": 1},
    "trainer": {"max_steps": 4, "val_every_steps": 2, "checkpoint_every_steps": 2, "progress": False, "threads": 1,
                "log_every_steps": 1, "val_batches": 1},
    "generate": {"prompt": "def ", "max_new_tokens": 4},
}


def tiny(**sections) -> dict:
    cfg = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cli(*args, env: dict | None = None, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``genloom ARGS`` in a fresh interpreter (the real entry point, the real argument parsing)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run([sys.executable, "-m", "genloom", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


def assert_clean_failure(result: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """Exit ``code``, no Python traceback, and every needle (the offending path/field/file/plugin) in stderr."""
    err = result.stderr
    assert result.returncode == code, f"exit {result.returncode}, expected {code}\nstdout: {result.stdout[-2000:]}\nstderr: {err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in err, f"{needle!r} not in stderr:\n{err[-3000:]}"
    return err


def snapshot(run_dir: Path) -> dict[str, str]:
    """SHA-256 of every file of a run directory (the lock file aside), by relative path."""
    out = {}
    for path in sorted(Path(run_dir).rglob("*")):
        if path.is_file() and path.name != ".genloom.lock":
            out[str(path.relative_to(run_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# -- a distribution of misbehaving plugins, found through its entry points ------------------------

PLUGINS = {
    # a hook that returns something that is not a list of records
    "rel-badreturn": """
        from genloom.core import hookimpl

        @hookimpl
        def genloom_backbones():
            return 42
    """,
    # implements a hookspec that a plugin which is not installed (genloom-lstm-extras) would add
    "rel-orphanhook": """
        from genloom.core import hookimpl

        @hookimpl
        def genloom_lstm_cells():
            return []
    """,
    # offers a component of a kind that a plugin which is not installed would declare
    "rel-orphankind": """
        from genloom.core import hookimpl, records

        @hookimpl
        def genloom_components():
            return [records.Component(kind="memory", name="kv-memory", factory="rel_plugins.nowhere:build", summary="x")]
    """,
    # a decoder whose module fails to import when it is built
    "rel-brokendecoder": """
        from genloom.core import hookimpl, records

        @hookimpl
        def genloom_decoders():
            return [records.Component(kind="decoder", name="broken-decoder", factory="rel_plugins.no_such_module:build",
                                      summary="its module does not exist")]
    """,
    # a newly installed plugin that also names a backbone 'transformer'
    "rel-shadow": """
        from genloom.core import hookimpl, records

        @hookimpl
        def genloom_backbones():
            return [records.Component(kind="backbone", name="transformer", factory="rel_plugins.no_such_module:build",
                                      summary="another transformer")]
    """,
}


