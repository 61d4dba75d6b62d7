"""Run directories: existing content is never replaced unless asked, one writer at a time (a dead
writer's lock is taken over), Ctrl-C keeps a resumable checkpoint and exits 130, every load checks
the weights and checkpoints it reads, and after each refusal the run is unchanged and still loads
and resumes. One tiny run is trained per module; each test works on a copy of it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genloom.core import runio
from genloom.core.errors import CheckpointError

from reliability_kit import assert_clean_failure, cli, flip_byte, snapshot, tiny, write_config

SECRET = "s3cr3t-from-the-environment"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 4-step run whose wandb project comes from the environment."""
    from genloom.core.training import train

    os.environ["GENLOOM_REL_SECRET"] = SECRET  # later loads of the run resolve it again
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(tiny(project="${oc.env:GENLOOM_REL_SECRET}"), run_dir=run_dir, generate=False)
    return run_dir


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def resume(run_dir: Path, steps: int, *overrides):
    from genloom.core.training import train

    return train(run_dir, [f"trainer.max_steps={steps}", *overrides], resume=True, generate=False)


def test_a_finished_run_holds_every_file_and_no_secret(trained):
    for name in (runio.CONFIG, runio.PLUGINS, runio.WEIGHTS, "checkpoints/last.ckpt"):
        assert (trained / name).is_file(), name
    for path in trained.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path  # config.yaml and the checkpoint keep ${oc.env:...}
    assert "${oc.env:GENLOOM_REL_SECRET}" in (trained / runio.CONFIG).read_text()
    assert not [p for p in trained.rglob("*.tmp")]


def test_training_over_an_existing_run_is_refused_through_the_cli(run, tmp_path):
    before = snapshot(run)
    config = write_config(tmp_path / "tiny.yaml", tiny())
    assert_clean_failure(cli("train", config, "--run-dir", run), str(run), "--resume", "--overwrite")
    assert snapshot(run) == before


def test_weights_without_checkpoints_are_never_overwritten(run):
    from genloom.core.training import train

    shutil.rmtree(run / "checkpoints")
    before = snapshot(run)
    with pytest.raises(CheckpointError, match="already holds"):
        train(tiny(), run_dir=run, generate=False)
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        resume(run, 6)
    assert snapshot(run) == before


def test_incompatible_resume_rewrites_nothing_then_the_run_resumes(run):
    before = snapshot(run)
    with pytest.raises(CheckpointError, match="does not match"):
        resume(run, 6, "backbone.n_layers=2")
    assert snapshot(run) == before
    # a killed writer's temporary files are removed by the next start
    (run / ".config.yaml.999.tmp").write_text("half")
    (run / "checkpoints" / ".last.ckpt.999.tmp").write_bytes(b"PK")
    result = resume(run, 6)
    assert result.global_step == 6
    assert not [p for p in run.rglob("*.tmp")]
    runio.verify_weights(run / runio.WEIGHTS)


def test_one_writer_per_run_and_a_dead_writers_lock_is_taken_over(run):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom genloom.core.runio import RunLock\n"
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run)
        assert_clean_failure(cli("train", run, "--resume"), "in use", f"PID {holder.pid}")
        assert snapshot(run) == before
    finally:
        holder.kill()  # kill -9: the kernel drops its flock
        holder.wait()
    lock = runio.prepare_run_dir(run, resume=True)
    try:
        assert lock.took_over and str(holder.pid) in lock.took_over
    finally:
        lock.release()


def test_ctrl_c_saves_a_checkpoint_exits_130_and_the_run_resumes(tmp_path):
    config = write_config(tmp_path / "long.yaml", tiny(trainer={"max_steps": 100_000, "checkpoint_every_steps": 1, "val_every_steps": 1000}))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "genloom", "train", str(config), "--run-dir", str(run_dir), "--no-sample"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_clean_failure(result, "checkpoint saved", "--resume", code=130)
    runio.verify_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    import torch

    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert resume(run_dir, step + 1).global_step == step + 1


# -- integrity on every load ---------------------------------------------------------------------

def test_a_flipped_byte_in_the_weights_is_refused_naming_the_file(run):
    flip_byte(run / runio.WEIGHTS, -10)
    assert_clean_failure(cli("generate", run, "max_new_tokens=2"), "model.safetensors", "SHA-256")


@pytest.mark.parametrize("damage", ["truncated", "empty", "header", "not-json"])
def test_damaged_weights_are_refused_naming_the_file(run, damage):
    import genloom

    path = run / runio.WEIGHTS
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "header": b"\xff" * 8 + data[8:],
                      "not-json": data[:8] + b"{" * (len(data) - 8)}[damage])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        genloom.load(run)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_damaged_checkpoints_are_refused_on_load_and_resume(run, damage):
    import genloom

    ckpt = run / "checkpoints" / "last.ckpt"
    if damage == "flip":
        flip_byte(ckpt, ckpt.stat().st_size // 2)
    else:
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3 if damage == "truncate" else 0])
    before = snapshot(run)
    with pytest.raises(CheckpointError, match="last.ckpt"):
        genloom.load(ckpt)
    with pytest.raises(CheckpointError, match="last.ckpt"):
        resume(run, 6)
    assert snapshot(run) == before


def test_damaged_run_metadata_is_refused_naming_the_file(run):
    import genloom

    (run / runio.PLUGINS).write_text("{not json")
    with pytest.raises(CheckpointError, match="plugins.json"):
        genloom.load(run)
    (run / runio.PLUGINS).unlink()
    (run / runio.CONFIG).write_text("- a list\n")
    with pytest.raises(Exception, match="config.yaml"):
        genloom.load(run)
    (run / runio.CONFIG).unlink()
    with pytest.raises(CheckpointError, match="config.yaml"):
        genloom.load(run)


# -- paths -----------------------------------------------------------------------------------------

def test_run_directory_paths_a_user_gets_wrong(trained, tmp_path):
    import genloom
    from genloom.core.training import train

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        train(tiny(), run_dir=a_file, generate=False)
    with pytest.raises(CheckpointError, match="cannot create"):
        train(tiny(), run_dir=a_file / "run", generate=False)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="symbolic link"):
        train(tiny(), run_dir=dangling, generate=False)
    assert not (tmp_path / "nowhere").exists()
    # a symlink to a run is that run: it loads, and training over it is refused
    link = tmp_path / "link"
    link.symlink_to(trained)
    before = snapshot(trained)
    assert genloom.load(link).generate([[100]], max_new_tokens=2).ids
    with pytest.raises(CheckpointError, match="already holds"):
        train(tiny(), run_dir=link, generate=False)
    assert snapshot(trained) == before
    # a run moved to a path with spaces and non-ASCII characters still loads
    moved = tmp_path / "rün ✓ dir"
    shutil.copytree(trained, moved)
    assert genloom.load(moved).generate([[100]], max_new_tokens=2).ids
    assert_clean_failure(cli("generate", tmp_path / "no-such-run"), "no-such-run")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_run_directory_is_refused(tmp_path):
    from genloom.core.training import train

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="cannot write"):
            train(tiny(), run_dir=locked, generate=False)
    finally:
        locked.chmod(0o700)


def test_import_hf_never_replaces_an_existing_run(run, tmp_path):
    from genloom.core import hf

    source = tmp_path / "hf"
    source.mkdir()
    before = snapshot(run)
    with pytest.raises(CheckpointError, match="already holds"):
        hf.import_llama(source, run)
    assert_clean_failure(cli("import", "hf", source, "--out", run), str(run), "--overwrite")
    (tmp_path / "out-file").write_text("x")
    assert_clean_failure(cli("import", "hf", source, "--out", tmp_path / "out-file"), "out-file")
    assert_clean_failure(cli("import", "hf", tmp_path / "no-such-dir", "--out", tmp_path / "new"), "no-such-dir")
    assert snapshot(run) == before and not (tmp_path / "new").exists()


def test_overwrite_and_resume_never_touch_a_directory_that_is_no_run(tmp_path):
    from genloom.core.training import train

    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    (home / "config.yaml").write_text("mine")
    before = snapshot(home)
    for flags in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(CheckpointError, match="does not look like a genloom run"):
            train(tiny(), run_dir=home, generate=False, **flags)
    assert snapshot(home) == before and sorted(p.name for p in home.iterdir()) == ["config.yaml", "logs"]  # no lock file left


@pytest.mark.parametrize("override,path", [
    ("backbone.d_model=17592186044416", "head"),       # 2^44: far beyond any address space, refused at allocation
    ("trainer.accelerator=tpu", "trainer.accelerator"),  # Lightning refuses it (torch_xla missing)
    ("trainer.strategy=no-such-strategy", "trainer.strategy"),
])
def test_settings_refused_late_are_config_errors_and_leave_no_directory(tmp_path, override, path):
    from genloom.core.errors import ConfigError
    from genloom.core.training import train

    if override.startswith("trainer.accelerator"):
        pytest.importorskip("lightning")
        try:
            import torch_xla  # noqa: F401
            pytest.skip("torch_xla is installed")
        except ImportError:
            pass
    with pytest.raises(ConfigError) as info:
        train(tiny(), [override], run_dir=tmp_path / "run", generate=False)
    assert info.value.path == path
    assert not (tmp_path / "run").exists()
