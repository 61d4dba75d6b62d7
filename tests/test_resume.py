"""Nothing lost on failure: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one;
damaged checkpoints raise CheckpointError naming the file; checkpoints never unpickle code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from genloom.core.errors import CheckpointError

CONFIG = {
    "seed": 0,
    "logger": "none",
    "data": {"name": "pystdlib", "seq_len": 32, "batch_size": 8, "max_train_bytes": 60_000, "max_eval_bytes": 4_000},
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    # dropout draws from the global RNG: resuming must restore the random state, not only the weights
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.1},
    "objective": {"name": "next-token"},
    "decoder": {"name": "sampling"},
    "optimizer": {"lr": 3e-3, "warmup_steps": 3},
    "trainer": {"max_steps": 24, "val_every_steps": 8, "val_batches": 3, "checkpoint_every_steps": 4, "progress": False, "threads": 1},
    "generate": {"prompt": "def ", "max_new_tokens": 8},
}

# the run to be killed sleeps after every batch so that the kill lands mid-training (sleeping changes no state)
SLOW_RUN = """
import sys, time
import lightning as L
from genloom.core.training import train

class Slow(L.Callback):
    def on_train_batch_end(self, *args):
        time.sleep(0.25)

train(sys.argv[1], run_dir=sys.argv[2], callbacks=[Slow()], generate=False)
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.slow
def test_sigkill_then_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    from genloom.core.training import load_checkpoint, train

    torch.manual_seed(0)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(cfg), str(killed)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(0.5)  # let it go on training past the checkpoint
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()
    at_kill = load_checkpoint(last)
    step_at_kill = at_kill["global_step"]
    assert 0 < step_at_kill < CONFIG["trainer"]["max_steps"]

    resumed = subprocess.run([sys.executable, "-m", "genloom.core.train_cli", str(killed), "--resume", "--no-sample"], env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout

    reference = train(str(cfg), run_dir=tmp_path / "uninterrupted", generate=False)
    assert reference.global_step == CONFIG["trainer"]["max_steps"]
    a, b = _weights(killed / "model.safetensors"), _weights(tmp_path / "uninterrupted" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume (killed at step {step_at_kill})"
    # and the resumed run really trained on from the checkpoint (weights moved since then)
    assert any(not torch.equal(at_kill["state_dict"]["model." + k], a[k]) for k in a)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from genloom.core.training import train

    torch.manual_seed(0)
    cfg = dict(CONFIG, trainer=dict(CONFIG["trainer"], max_steps=4, val_every_steps=4))
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    train(cfg, run_dir=run_dir, generate=False)
    return run_dir


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_checkpoint_raises_checkpoint_error_naming_the_file(finished_run, tmp_path):
    from genloom.core.training import train

    run = _copy_run(finished_run, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(last)) as info:
        train(run, resume=True, generate=False)
    assert "truncated or corrupted" in str(info.value)


def test_bit_flipped_checkpoint_fails_its_crc_check(finished_run, tmp_path):
    from genloom.core.training import verify_checkpoint

    run = _copy_run(finished_run, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside tensor storage: torch.load alone would not notice
    last.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(last)):
        verify_checkpoint(last)


def test_cli_reports_a_damaged_checkpoint_and_exits_2(finished_run, tmp_path, capsys):
    from genloom.core import train_cli

    run = _copy_run(finished_run, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")
    assert train_cli.main([str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(last) in err and "Traceback" not in err


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoints_are_loaded_without_executing_pickled_code(tmp_path):
    from genloom.core.training import load_checkpoint

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit()}, evil)
    with pytest.raises(CheckpointError, match="could not be read safely"):
        load_checkpoint(evil)


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # the run directory was copied elsewhere
def test_resume_continues_from_the_checkpoint_state(finished_run, tmp_path):
    """Resuming a finished run with a larger max_steps trains on from step 4 with the saved data position."""
    from genloom.core.training import load_checkpoint, train

    run = _copy_run(finished_run, tmp_path / "run")
    before = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert before["global_step"] == 4 and before["genloom"]["batches_seen"] == 4
    res = train(run, ["trainer.max_steps=6"], resume=True, generate=False)
    assert res.global_step == 6
    after = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert after["genloom"]["batches_seen"] == 6


def test_resume_past_max_steps_says_so_and_changes_nothing(finished_run, tmp_path):
    """Resuming a run already at trainer.max_steps is refused with the step reached and the fix,
    not a silent success; the checkpoint is left as it was."""
    from genloom.core.training import train

    run = _copy_run(finished_run, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    for steps in (4, 2):
        with pytest.raises(CheckpointError, match=r"already at step 4 and trainer.max_steps is %d.*trainer.max_steps=8" % steps):
            train(run, [f"trainer.max_steps={steps}"], resume=True, generate=False)
    assert last.read_bytes() == before
