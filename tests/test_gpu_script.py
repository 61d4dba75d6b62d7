"""benchmarks/gpu/run.sh and its helpers, checked on the CPU: argument handling, the dry run's JSON,
and the MFU arithmetic."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "gpu" / "run.sh"

sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
import report  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils' timeout")


def sh(*args, **env):
    return subprocess.run(["bash", str(RUN), *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_bad_arguments_are_refused_with_the_allowed_values():
    r = sh("--only", "decode,bogus")
    assert r.returncode == 2 and "unknown stage 'bogus' (stages: setup tests decode train scan)" in r.stderr
    r = sh("--frob")
    assert r.returncode == 2 and "unknown argument '--frob'" in r.stderr
    assert "--only STAGES" in sh("--help").stdout


@pytest.mark.slow
def test_dry_run_of_one_stage_writes_its_json_and_the_summary(tmp_path):
    r = sh("--dry-run", "--only", "scan", "--out", str(tmp_path), OMP_NUM_THREADS="1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] and summary["dry_run"] and [s["stage"] for s in summary["stages"]] == ["scan"]
    rows = summary["results"]["scan"]["rows"]
    assert {row["backend"] for row in rows} >= {"reference", "chunked/auto"}


def test_mfu_follows_the_palm_formula(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "logs" / "version_0").mkdir(parents=True)
    (run / "config.yaml").write_text("backbone: {n_layers: 12, d_model: 768}\ndata: {seq_len: 1024}\ntrainer: {precision: bf16-mixed, compile: true}\n")
    (run / "metrics.json").write_text(json.dumps({"parameters": 85_000_000, "global_step": 300}))
    rates = [1.0] * 10 + [100_000.0] * 10  # the first half (compilation, warm-up) is left out
    (run / "logs" / "version_0" / "metrics.csv").write_text("step,tok/s\n0,\n" + "".join(f"{i + 1},{r}\n" for i, r in enumerate(rates)))
    monkeypatch.setenv("GENLOOM_PEAK_TFLOPS", "100")
    report.mfu(str(run), str(tmp_path / "train.json"))
    out = json.loads((tmp_path / "train.json").read_text())
    flops = 6 * 85_000_000 + 12 * 12 * 768 * 1024
    assert out["flops_per_token"] == flops
    assert out["mfu"] == pytest.approx(100_000 * flops / 100e12)


def test_peak_table_picks_the_device():
    assert report.peak_flops("NVIDIA H200") == 989.4e12
    assert report.peak_flops("NVIDIA H100 PCIe") == 756.0e12
    assert report.peak_flops("NVIDIA L40S") == 362.0e12
    assert report.peak_flops("some other device") is None
