"""``genloom report`` and ``genloom compare``: self-contained pages, checked in headless Chromium.

A tiny run (bytes, one-layer transformer, 8 steps, CSV logs) is trained once per module. The
browser test loads both pages with the DevTools protocol and asserts no console error, every image
decoded, curves and tables present; its broken variant (a page that fetches from the network and
throws) shows the check fails. Screenshots are kept under the test's tmp folder, and under
``$GENLOOM_TEST_ARTEFACTS`` when that is set (CI keeps them).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from genloom.core import hookimpl, records

CONFIG = {
    "seed": 0,
    "logger": "csv",
    "data": {"name": "pystdlib", "seq_len": 32, "batch_size": 8, "max_train_bytes": 40_000, "max_eval_bytes": 4_000},
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2},
    "objective": {"name": "next-token"},
    "decoder": {"name": "sampling"},
    "optimizer": {"lr": 3e-3, "warmup_steps": 2},
    "trainer": {"max_steps": 8, "val_every_steps": 4, "checkpoint_every_steps": 8, "progress": False, "threads": 1, "log_every_steps": 1},
    "generate": {"prompt": "def ", "max_new_tokens": 12},
}
DRAFT = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
         "objective": {"name": "next-token"}}


def _train(run_dir: Path, **changes) -> Path:
    import copy

    from genloom.core.training import train

    cfg = copy.deepcopy(CONFIG)
    cfg.update(changes)
    train(cfg, run_dir=run_dir, generate=False)
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("reporting") / "tiny")


def _cli(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "genloom", *argv], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _artefact(name: str, data: bytes, tmp_path: Path) -> None:
    folder = tmp_path / "artefacts"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)
    keep = os.environ.get("GENLOOM_TEST_ARTEFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / name).write_bytes(data)


def _self_contained(html: str) -> list[str]:
    """Every src/href that would leave the page (anything but data: URIs and in-page anchors)."""
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", html)
    return [r for r in refs if not (r.startswith("data:") or r.startswith("#"))]


# -- logs -------------------------------------------------------------------------------------

def test_csv_logs_give_every_curve_in_step_order(run_dir):
    from genloom.reporting.logs import read_logs

    logs = read_logs(run_dir)
    assert {"train/loss", "train/lr", "val/loss", "val/bits_per_byte", "tok/s"} <= set(logs.curves)
    steps = [s for s, _ in logs.curves["train/loss"]]
    assert steps == sorted(steps) and len(steps) == 8
    assert logs.summary["global_step"] == 8 and "bits_per_byte" in logs.summary["val"]


def _wandb_file(path: Path, rows: list[dict], pad_key: str = "") -> None:
    """Write a transaction log the way wandb does: 7-byte header, 32 KiB blocks of framed chunks."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for row in rows:
        record = pb.Record()
        for key, value in row.items():
            item = record.history.item.add()
            item.key = key
            item.value_json = json.dumps(value)
        payload = record.SerializeToString()
        first = True
        while True:
            left = 32768 - len(out) % 32768
            if left < 7:
                out += b"\0" * left
                continue
            chunk, payload = payload[: left - 7], payload[left - 7:]
            kind = (1 if first else 4) if not payload else (2 if first else 3)
            out += struct.pack("<IHB", 0, len(chunk), kind) + chunk
            first = False
            if not payload:
                break
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(out))


def test_wandb_transaction_log_is_read_across_blocks(tmp_path):
    from genloom.reporting.logs import read_logs

    big = "x" * 40_000  # a record longer than a block: FIRST, MIDDLE, LAST chunks
    rows = [{"trainer/global_step": s, "train/loss": 5.0 - s / 10, "_runtime": 1.0, "note": big if s == 3 else "-"} for s in range(6)]
    rows.append({"trainer/global_step": 5, "val/loss": 4.5})
    _wandb_file(tmp_path / "wandb" / "offline-run-20260101_000000-x" / "run-x.wandb", rows)
    logs = read_logs(tmp_path)
    assert logs.curves["train/loss"] == [(s, 5.0 - s / 10) for s in range(6)]
    assert logs.curves["val/loss"] == [(5, 4.5)]
    assert "_runtime" not in logs.curves and "note" not in logs.curves


@pytest.mark.slow
def test_offline_wandb_and_csv_logs_of_the_same_run_agree(tmp_path, run_dir):
    """The same run logged through offline wandb (trained by the CLI in its own process, as a user
    would, so wandb's files are complete when it exits) gives the CSV run's curves."""
    import yaml

    from genloom.reporting.logs import read_logs

    config = tmp_path / "wandb.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "logger": "wandb"}))
    wandb_run = tmp_path / "wandb-run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, "-m", "genloom", "train", str(config), "--run-dir", str(wandb_run), "--no-sample"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = read_logs(run_dir), read_logs(wandb_run)
    for name in ("train/loss", "train/lr", "val/loss", "val/bits_per_byte"):
        assert name in b.curves, f"{name} missing from the wandb log; curves: {sorted(b.curves)}"
        assert [s for s, _ in a.curves[name]] == [s for s, _ in b.curves[name]]
        assert [v for _, v in a.curves[name]] == pytest.approx([v for _, v in b.curves[name]], rel=1e-6)


# -- pages ------------------------------------------------------------------------------------

class _ThirdParty:
    """An out-of-tree decoder: samples, but (falsely) declares itself equal to greedy decoding."""

    @staticmethod
    @hookimpl
    def genloom_decoders():
        return [records.decoder("claims-greedy", f"{__name__}:build_claims_greedy", summary="Samples but claims to be greedy (test).")]


def build_claims_greedy(config, ctx):
    from genloom.core.generation import Decoder

    class ClaimsGreedy(Decoder):
        exact = "greedy"

    return ClaimsGreedy(config, ctx)


@pytest.fixture
def third_party_registry():
    from genloom.core.plugins import registry_with, set_registry

    previous = set_registry(registry_with(_ThirdParty))
    yield
    set_registry(previous)


@pytest.fixture(scope="module")
def pages(run_dir, tmp_path_factory):
    import genloom

    out = tmp_path_factory.mktemp("pages")
    report = genloom.report(run_dir, out / "report.html")
    compare = genloom.compare(run_dir, ["greedy", "sampling", "beam", "speculative", {"name": "speculative", "greedy": True, "label": "speculative-greedy"}],
                              ["def ", "import os"], out / "compare.html", max_new_tokens=10,
                              options={"speculative": {"draft": DRAFT, "gamma": 3}})
    return report, compare


def test_pages_are_self_contained(pages):
    report, compare = pages
    for path in pages:
        html = path.read_text()
        assert _self_contained(html) == [], path
        assert "<script" not in html and "default-src 'none'" in html
    html = report.read_text()
    assert 'id="curves"' in html and html.count("data:image/svg+xml;base64,") >= 4  # loss, bits per byte, lr, tokens/s
    assert "next-token" in html and "baseline" in html  # config tree and plugins table


def test_compare_metrics_and_exactness(pages):
    from genloom.reporting.comparison import EXACT_NOTES
    from genloom.reporting.page import esc

    html = pages[1].read_text()
    assert html.count(esc(EXACT_NOTES["sampling"])) == 2  # sampling and speculative
    assert "same tokens as greedy here" in html  # speculative with greedy drafting reproduces greedy
    assert "differs from greedy here" not in html
    assert "draft passes" in html and "acceptance rate per draft position" in html


def test_a_false_exactness_claim_is_caught(run_dir, tmp_path, third_party_registry):
    import genloom

    page = genloom.compare(run_dir, "greedy,claims-greedy", ["def "], tmp_path / "c.html", max_new_tokens=12)
    html = page.read_text()
    assert "claims-greedy" in html and "differs from greedy here" in html  # a third-party decoder, through the registry


@pytest.fixture
def chromium():
    from genloom.reporting.browser import find_chromium

    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium; or set GENLOOM_CHROMIUM): the browser check needs one")
    return path


def test_pages_render_in_headless_chromium(chromium, pages, tmp_path):
    from genloom.reporting.browser import inspect_page
    count = """({tables: document.querySelectorAll('table').length, curves: document.querySelectorAll('#curves img').length,
                 eval: document.querySelectorAll('#evaluation table').length, metrics: document.querySelectorAll('table.metrics tbody tr').length,
                 outputs: document.querySelectorAll('#outputs pre').length, plots: document.querySelectorAll('#acceptance img').length,
                 height: document.body.scrollHeight})"""
    report = inspect_page(pages[0], expression=count)
    _artefact("report.png", report.screenshot, tmp_path)
    assert report.errors == [], report.console
    assert report.images and all(i["decoded"] and i["naturalWidth"] > 0 for i in report.images), report.images
    assert report.value["curves"] >= 4 and report.value["eval"] >= 2 and report.value["tables"] >= 4
    assert report.screenshot.startswith(b"\x89PNG")

    compare = inspect_page(pages[1], expression=count)
    _artefact("compare.png", compare.screenshot, tmp_path)
    assert compare.errors == [], compare.console
    assert compare.images and all(i["decoded"] and i["naturalWidth"] > 0 for i in compare.images), compare.images
    assert compare.value["metrics"] == 5 and compare.value["outputs"] == 10 and compare.value["plots"] == 2


def test_the_browser_check_catches_a_broken_page(chromium, tmp_path):
    from genloom.reporting import page
    from genloom.reporting.browser import inspect_page
    broken = page.document("broken", "", [("s", "S", '<img src="https://example.invalid/plot.png" alt="remote"><img src="data:image/png;base64,AAAA" alt="bad">')])
    path = tmp_path / "broken.html"
    path.write_text(broken)
    check = inspect_page(path)
    assert check.errors  # the CSP refuses the fetch, and says so in the console
    assert [i["decoded"] for i in check.images] == [False, False]


# -- bad input --------------------------------------------------------------------------------

def test_bad_input_is_one_message_and_exit_2(run_dir, tmp_path, capsys):
    from genloom.core.cli import main

    no_logs = tmp_path / "nologs"
    shutil.copytree(run_dir, no_logs, ignore=shutil.ignore_patterns("logs"))
    cases = [
        (["report", str(tmp_path / "missing")], "does not exist"),
        (["report", str(no_logs)], "has no training logs"),
        (["report", str(run_dir), "--out", str(tmp_path)], "is a directory"),
        (["report", str(run_dir), "--out", str(tmp_path / "no" / "such" / "r.html")], "does not exist"),
        (["compare", str(run_dir), "--decoders", "greedy,nonesuch", "--out", str(tmp_path / "c.html")], "unknown decoder 'nonesuch'"),
        (["compare", str(run_dir), "--decoders", "speculative", "--out", str(tmp_path / "c.html")], "decoder 'speculative' cannot be built"),
        (["compare", str(run_dir), "--decoders", ",", "--out", str(tmp_path / "c.html")], "names no decoder"),
        (["compare", str(tmp_path / "missing"), "--decoders", "greedy"], "does not exist"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "c.html").exists()


@pytest.mark.slow
def test_the_command_line_writes_both_pages(run_dir, tmp_path):
    r = _cli("report", str(run_dir), "--out", str(tmp_path / "r.html"), "--no-samples")
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr[-2000:]
    r = _cli("compare", str(run_dir), "def ", "--decoders", "greedy,sampling", "--max-new-tokens", "4", "--out", str(tmp_path / "c.html"))
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr[-2000:]
    assert _self_contained((tmp_path / "c.html").read_text()) == []


def test_existing_file_is_kept_without_overwrite(run_dir, tmp_path):
    import genloom
    from genloom.reporting import ReportError

    out = tmp_path / "r.html"
    out.write_text("keep me")
    with pytest.raises(ReportError, match="already exists; pass --overwrite"):
        genloom.report(run_dir, out, samples=False)
    assert out.read_text() == "keep me"
    genloom.report(run_dir, out, samples=False, overwrite=True)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left behind


def test_cli_help_imports_neither_torch_nor_matplotlib():
    code = textwrap.dedent(
        """
        import sys
        from genloom.core.cli import main
        for argv in (["--help"], ["report", "--help"], ["compare", "--help"], ["plugins", "--json"], ["components", "--json"]):
            try:
                main(argv)
            except SystemExit:
                pass
        print("HEAVY", [m for m in ("torch", "matplotlib", "lightning") if m in sys.modules])
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_a_forecaster_report_plots_forecasts_with_intervals(tmp_path):
    import genloom

    cfg = {"seed": 0, "logger": "csv", "data": {"name": "macrodata", "lookback": 16, "horizon": 4, "batch_size": 32},
           "tokenizer": {"name": "variate", "instance_norm": True}, "head": {"name": "forecast"},
           "backbone": {"name": "itransformer", "d_model": 16, "n_layers": 1, "n_heads": 2}, "objective": {"name": "mse"},
           "optimizer": {"lr": 1e-3, "warmup_steps": 2},
           "trainer": {"max_steps": 6, "val_every_steps": 3, "checkpoint_every_steps": 6, "log_every_steps": 1, "progress": False, "threads": 1}}
    from genloom.core.training import train

    train(cfg, run_dir=tmp_path / "series", generate=False)
    html = genloom.report(tmp_path / "series", tmp_path / "r.html").read_text()
    assert 'alt="forecast with interval"' in html and "test coverage of the 90 % interval" in html
    assert 'alt="mae curve"' in html and 'alt="mse curve"' not in html  # the mse repeats the loss: one panel
    assert _self_contained(html) == []
