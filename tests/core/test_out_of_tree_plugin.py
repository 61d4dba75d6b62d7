"""The example plugin, installed into a fresh virtual environment with the project, is found,
usable from a config and passes the conformance kit; the new-plugin scaffold passes its own tests."""

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fresh_env(tmp_path: Path) -> Path:
    """A new virtual environment that sees this environment's third-party packages (torch etc.)
    through a .pth file, so nothing is downloaded; genloom and the plugin are installed into it."""
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    py = env / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


def pip_install(py: Path, *targets):
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *map(str, targets)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_example_plugin_in_fresh_venv(tmp_path):
    py = fresh_env(tmp_path)
    pip_install(py, ROOT, ROOT / "examples" / "genloom-example-plugin")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(py), "-m", "genloom", "plugins", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plugins = {p["name"]: p for p in json.loads(r.stdout)}
    assert plugins["example"]["distribution"] == "genloom-example"
    assert {"kind": "backbone", "name": "example-conv"} in plugins["example"]["components"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": {"name": "example-conv", "d_model": 16}, "objective": {"name": "next-token"}, "decoder": {"name": "example-topk", "k": 4}}))
    r = subprocess.run([str(py), "-m", "genloom", "config", str(cfg)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(py), "-m", "genloom", "generate", str(cfg), "prompt=ab", "max_new_tokens=4", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "examples" / "genloom-example-plugin" / "tests")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:]


@pytest.mark.slow
def test_scaffold_passes_its_own_tests(tmp_path):
    py = fresh_env(tmp_path)
    pip_install(py, ROOT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(py), "-m", "genloom", "new-plugin", "my-idea", "--dir", str(tmp_path)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    pip_install(py, tmp_path / "genloom-my-idea")
    r = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "genloom-my-idea" / "tests")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:]
    r = subprocess.run([str(py), "-m", "genloom", "new-plugin", "Bad Name"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "lower-case" in r.stderr
