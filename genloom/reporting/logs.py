"""Read what a training run logged, from its own files (no wandb login, no network).

A run directory may hold, depending on its ``logger``:

- ``logs/version_N/metrics.csv`` (``logger: csv``; one version per launch, a resume adds one);
- ``wandb/offline-run-*/run-*.wandb`` or ``wandb/run-*/run-*.wandb`` (``logger: wandb``): the
  wandb transaction log, read here record by record (leveldb-log framing, protobuf records from
  ``wandb.proto``) without the wandb service or an account;
- ``metrics.json``: the final validation figures, steps and timings ``genloom train`` writes.

:func:`read_logs` merges the curve sources into one :class:`RunLogs`: per metric, the (step, value)
points in step order; a later launch (a resume) replaces the points of an earlier one at the same
steps.
"""

from __future__ import annotations

import csv
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

#: The column that holds the optimizer step (CSV logger; wandb logs it as ``trainer/global_step``).
STEP_KEYS = ("step", "trainer/global_step")
#: Bookkeeping columns that are not metrics.
SKIP_KEYS = {"epoch", "step", "trainer/global_step", "_step", "_runtime", "_timestamp", "_wandb"}


@dataclass
class RunLogs:
    """The metrics a run logged: ``curves[name]`` is a list of (step, value), sorted by step."""

    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    """The contents of ``metrics.json`` (final validation metrics, steps, seconds, parameters), if present."""

    def add(self, name: str, step: int, value: float) -> None:
        self.curves.setdefault(name, []).append((int(step), float(value)))

    def finish(self) -> "RunLogs":
        for name, points in self.curves.items():
            by_step = {}
            for step, value in points:  # later sources win: a resumed launch re-logs some steps
                by_step[step] = value
            self.curves[name] = sorted(by_step.items())
        return self

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self.curves if n.startswith(prefix))


def csv_logs(run_dir: Path) -> list[Path]:
    """The CSV logger's files, oldest launch first."""
    def version(p: Path) -> tuple[int, str]:
        tail = p.parent.name.rpartition("_")[2]
        return (int(tail) if tail.isdigit() else -1, str(p))

    return sorted(run_dir.glob("logs/*/metrics.csv"), key=version)


def wandb_logs(run_dir: Path) -> list[Path]:
    """The wandb transaction logs (offline or synced), oldest first (their folder names start with the date)."""
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb")) + list(run_dir.glob("wandb/run-*/run-*.wandb"))
    return sorted(files, key=lambda p: p.parent.name.split("-", 1)[1])


def read_logs(run_dir) -> RunLogs:
    """Every curve the run logged (CSV and wandb files) and its ``metrics.json``."""
    run_dir = Path(run_dir)
    logs = RunLogs()
    for path in csv_logs(run_dir):
        _read_csv(path, logs)
        logs.sources.append(path)
    for path in wandb_logs(run_dir):
        _read_wandb(path, logs)
        logs.sources.append(path)
    summary = run_dir / "metrics.json"
    if summary.exists():
        try:
            logs.summary = json.loads(summary.read_text())
        except json.JSONDecodeError:
            logs.summary = {}
    return logs.finish()


def _number(text) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _read_csv(path: Path, logs: RunLogs) -> None:
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = _number(row.get("step"))
            if step is None:
                continue
            for key, text in row.items():
                if key in SKIP_KEYS or key is None:
                    continue
                value = _number(text)
                if value is not None:
                    logs.add(key, int(step), value)


# -- wandb's transaction log ------------------------------------------------------------------
_BLOCK = 32 * 1024
_HEADER = 7  # ":W&B", a 2-byte magic, a version byte
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path):
    """The raw protobuf payloads of a ``.wandb`` file (leveldb log framing: 32 KiB blocks of
    chunks, each with a 7-byte header: checksum, length, type). A truncated tail (a run still
    writing, or killed) ends the iteration quietly."""
    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"'{path}' is not a wandb transaction log (no :W&B header)")
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's last bytes are padding when no header fits
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left  # zero padding to the end of the block
            continue
        chunk = data[pos + 7:pos + 7 + length]
        if len(chunk) < length:
            return
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def _read_wandb(path: Path, logs: RunLogs) -> None:
    from wandb.proto import wandb_internal_pb2 as pb

    for payload in wandb_records(path):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except Exception:
            continue
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            try:
                row[key] = json.loads(item.value_json)
            except (ValueError, TypeError):
                continue
        step = next((row[k] for k in STEP_KEYS if isinstance(row.get(k), (int, float))), None)
        if step is None:
            continue
        for key, value in row.items():
            if key in SKIP_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                logs.add(key, int(step), float(value))
