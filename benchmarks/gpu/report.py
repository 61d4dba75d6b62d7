"""Helpers of ``benchmarks/gpu/run.sh``: device information, the MFU of a training run, the summary.

    python benchmarks/gpu/report.py env OUT/env.json
    python benchmarks/gpu/report.py mfu RUN_DIR OUT/train.json
    python benchmarks/gpu/report.py junit OUT/tests.xml OUT/tests.json
    python benchmarks/gpu/report.py summary OUT          # OUT/stages.jsonl + OUT/*.json -> OUT/summary.json

Model FLOPs per trained token follow the PaLM paper's appendix B: 6 N for the matrix products of
the N parameters (forward and backward) plus 12 n_layers d_model seq_len for attention's two
products; the utilisation is achieved FLOP/s over the device's dense bf16 peak.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

#: Dense bf16 tensor-core peaks (FLOP/s) by device name fragment, from the vendors' data sheets.
PEAK_BF16 = {
    "H200": 989.4e12,
    "H100 SXM": 989.4e12,
    "H100 80GB HBM3": 989.4e12,
    "H100 NVL": 835.0e12,
    "H100 PCIe": 756.0e12,
    "H100": 756.0e12,  # an unrecognised H100 variant: the lowest of them
    "A100": 312.0e12,
    "L40S": 362.0e12,
    "L4": 121.0e12,
}


def peak_flops(name: str) -> float | None:
    override = os.environ.get("GENLOOM_PEAK_TFLOPS")
    if override:
        return float(override) * 1e12
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def env(path: str) -> None:
    info = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import torch

        info.update(torch=torch.__version__, cuda_available=torch.cuda.is_available(), cuda=torch.version.cuda)
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(device_name=p.name, device_memory_GiB=p.total_memory / 2**30, capability=f"{p.major}.{p.minor}", device_count=torch.cuda.device_count())
    except Exception as exc:  # report, do not fail: the summary says what is missing
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
    for module in ("lightning", "triton", "transformers", "tokenizers", "omegaconf", "safetensors", "rich", "pytest", "xformers", "genloom"):
        try:
            mod = __import__(module)
            info[f"{module}_version"] = getattr(mod, "__version__", "?")
        except Exception as exc:
            info[f"{module}_version"] = f"missing ({type(exc).__name__})"
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as exc:
        info["nvidia_smi"] = f"unavailable ({type(exc).__name__})"
    Path(path).write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


def mfu(run_dir: str, path: str) -> None:
    import yaml

    run = Path(run_dir)
    config = yaml.safe_load((run / "config.yaml").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    files = sorted(run.glob("logs/*/metrics.csv"))
    if not files:
        raise SystemExit(f"no metrics.csv under {run}/logs")
    rates = [float(r["tok/s"]) for r in csv.DictReader(files[-1].open()) if r.get("tok/s")]
    if not rates:
        raise SystemExit("the run logged no tok/s")
    steady = rates[len(rates) // 2:]  # the second half: past compilation and warm-up
    tokens_per_s = statistics.median(steady)
    backbone = config["backbone"]
    seq_len = config["data"]["seq_len"]
    n_params = metrics["parameters"]
    flops_per_token = 6 * n_params + 12 * backbone["n_layers"] * backbone["d_model"] * seq_len
    achieved = tokens_per_s * flops_per_token
    name = ""
    try:
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:
        pass
    peak = peak_flops(name)
    out = {
        "device_name": name, "parameters": n_params, "seq_len": seq_len, "global_step": metrics.get("global_step"),
        "fit_seconds": metrics.get("fit_seconds"), "tokens_per_s_median_second_half": tokens_per_s, "logged_rates": len(rates),
        "flops_per_token": flops_per_token, "achieved_TFLOPs": achieved / 1e12, "peak_bf16_TFLOPs": peak / 1e12 if peak else None,
        "mfu": achieved / peak if peak else None, "precision": config.get("trainer", {}).get("precision"), "compile": config.get("trainer", {}).get("compile"),
    }
    Path(path).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


def junit(xml_path: str, path: str) -> None:
    """pytest's JUnit XML -> counts and one record per test (outcome, seconds, message)."""
    import xml.etree.ElementTree as ET

    if not Path(xml_path).exists():
        Path(path).write_text(json.dumps({"error": f"{xml_path} was not written (pytest was stopped?)"}))
        return
    tests, counts = [], {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "failed" if tag == "failure" else tag
                message = (node.get("message") or node.text or "")[:1500]
                break
        counts[outcome] += 1
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "seconds": float(case.get("time") or 0), "message": message})
    Path(path).write_text(json.dumps({"counts": counts, "tests": tests}, indent=2))
    print(json.dumps(counts))


def summary(out_dir: str) -> None:
    out = Path(out_dir)
    stages = []
    log = out / "stages.jsonl"
    if log.exists():
        stages = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    results = {}
    for f in sorted(out.glob("*.json")):
        if f.name == "summary.json":
            continue
        try:
            results[f.stem] = json.loads(f.read_text())
        except Exception as exc:
            results[f.stem] = {"unreadable": f"{type(exc).__name__}: {exc}"}
    body = {"dry_run": os.environ.get("GENLOOM_GPU_DRY_RUN", "0") not in ("", "0"), "stages": stages,
            "ok": bool(stages) and all(s.get("rc") == 0 for s in stages), "results": results}
    (out / "summary.json").write_text(json.dumps(body, indent=2, default=str))
    for s in stages:
        print(f"{s['stage']:>8}: rc={s['rc']} in {s['seconds']}s")


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["help"]
    commands = {"env": env, "mfu": mfu, "junit": junit, "summary": summary}
    if command not in commands:
        raise SystemExit(__doc__)
    commands[command](*rest)
