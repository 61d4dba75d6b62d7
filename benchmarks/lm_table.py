"""Validation bits per byte of the byte-level language-model backbones after an equal short budget.

    python benchmarks/lm_table.py                      # 100 steps each, 1.5 min cap, 1 thread
    python benchmarks/lm_table.py --steps 400 --minutes 6 --only mamba,gss

Each backbone's shipped config (``configs/<name>.yaml``: byte tokenizer, ``pystdlib``, seq_len 128,
batch 8) is trained by ``genloom train`` with the same steps, time cap and evaluation bytes;
the transformer row uses the same data with a 2-layer, d_model 64 ``transformer``. Prints a
markdown table (steps reached, seconds, validation bits per byte).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["transformer", "mamba", "vir-retention", "gateloop", "gss", "laughing-hyena", "mega", "futurefill", "aaren", "smr", "abbie", "ebt", "hat-byte-word"]


def config_for(name: str, directory: Path) -> Path:
    if name != "transformer":
        return ROOT / "configs" / f"{name}.yaml"
    cfg = yaml.safe_load((ROOT / "configs" / "mamba.yaml").read_text())
    cfg["backbone"] = {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4}
    path = directory / "transformer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=1.5)
    parser.add_argument("--eval-bytes", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="")
    args = parser.parse_args(argv)
    names = [n for n in MODELS if not args.only or n in args.only.split(",")]
    print(f"| backbone | steps | seconds | val bits/byte |\n| --- | --- | --- | --- |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in names:
            overrides = [f"trainer.max_steps={args.steps}", f"trainer.max_time_minutes={args.minutes}", f"trainer.val_every_steps={args.steps}",
                         f"trainer.threads={args.threads}", f"data.max_eval_bytes={args.eval_bytes}", "logger=none", f"run_dir={tmp / name}", "generate.max_new_tokens=1"]
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "genloom", "train", str(config_for(name, tmp)), *overrides], capture_output=True, text=True, cwd=ROOT)
            seconds = time.perf_counter() - start
            text = result.stdout + result.stderr
            bpb = re.findall(r"val/bits_per_byte\s*\S\s*([0-9.]+)", text)
            steps = re.findall(r"validation after (\d+) steps", text)
            print(f"| {name} | {steps[-1] if steps else '?'} | {seconds:.0f} | {bpb[-1] if bpb else 'failed (rc %d)' % result.returncode} |", flush=True)


if __name__ == "__main__":
    main()
