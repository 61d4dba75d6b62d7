"""Embedded text data: the Python standard library's sources, and the user's own files."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import numpy as np

from genloom.core.data import DataSource, TokenWindows
from genloom.core.errors import ConfigError


def _bucket(name: str) -> float:
    """A stable pseudo-random number in [0, 1) for a file name (splits never depend on the machine's order)."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 2**32


class FileText(DataSource):
    """Text documents split by file into train/val/test."""

    def __init__(self, config, files: list[tuple[str, Path]]):
        self.config = config
        self.batch_size = config.batch_size
        self.eval_batch_size = config.eval_batch_size
        self.num_workers = config.num_workers
        self.info = {"modality": "text", "seq_len": config.seq_len}
        vf, tf = config.val_fraction, config.test_fraction
        self.files: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
        for name, path in sorted(files, key=lambda x: _bucket(x[0])):
            u = _bucket(name + "#split")
            split = "val" if u < vf else "test" if u < vf + tf else "train"
            self.files[split].append(path)
        self._docs: dict[str, list[bytes]] = {}
        self._cache: dict[tuple, TokenWindows] = {}

    def limit(self, split: str) -> int | None:
        if split == "train":
            return getattr(self.config, "max_train_bytes", None)
        return getattr(self.config, "max_eval_bytes", None)

    def documents(self, split: str) -> list[bytes]:
        if split not in self._docs:
            docs, total, cap = [], 0, self.limit(split)
            for path in self.files[split]:
                if cap is not None and total >= cap:
                    break
                data = path.read_bytes()
                docs.append(data)
                total += len(data)
            self._docs[split] = docs
        return self._docs[split]

    def load(self, split, tokenizer, ctx):
        key = (split, id(tokenizer))
        if key not in self._cache:
            docs = self.documents(split)
            if hasattr(tokenizer, "encode_many"):
                arrays = tokenizer.encode_many(docs)
            else:
                arrays = [tokenizer.encode_array(d) for d in docs]
            stream = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
            token_bytes = tokenizer.token_bytes() if hasattr(tokenizer, "token_bytes") else None
            self._cache[key] = TokenWindows(stream, self.config.seq_len, token_bytes, keep_tail=split != "train")
        return self._cache[key]


def stdlib_files() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel or "__pycache__" in rel:
            continue
        out.append((rel, path))
    return out


def build_pystdlib(config, ctx):
    return FileText(config, stdlib_files())


def build_text_files(config, ctx):
    files = []
    for i, p in enumerate(config.paths):
        path = Path(p).expanduser()
        if path.is_file():
            files.append((path.name, path))
        elif path.is_dir():
            files.extend((f.relative_to(path).as_posix(), f) for f in sorted(path.rglob(config.glob)) if f.is_file())
        else:
            raise ConfigError(f"'{p}' is neither a file nor a folder", path=f"data.paths[{i}]")
    if not files:
        raise ConfigError(f"no files match '{config.glob}' under {config.paths}", path="data.paths")
    return FileText(config, files)
