"""Embedded sequence-to-sequence data (no downloads): synthetic tasks with exact answers, and
docstring summaries paired with their function signatures mined from the Python standard library.

Synthetic tasks draw sources from a seeded generator and put each distinct source in one split by
a stable hash of its text, so no source of the test split is ever seen in training. The mined task
splits by source file (the same stable hash of the file name as ``pystdlib``), so nothing of a test
file is seen in training.
"""

from __future__ import annotations

import ast
import random
import warnings

from genloom.core.data import DataSource, SourceTargetPairs, pad_id_of
from genloom.core.errors import ConfigError

from .data import _bucket, stdlib_files

LETTERS = "abcdefghijklmnopqrstuvwxyz"
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """English words for 0 <= n < 10**6 ("four hundred twenty-one")."""
    if not 0 <= n < 10**6:
        raise ValueError(f"number_words covers 0 .. 999999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
    if n < 1000:
        return _ONES[n // 100] + " hundred" + (" " + number_words(n % 100) if n % 100 else "")
    return number_words(n // 1000) + " thousand" + (" " + number_words(n % 1000) if n % 1000 else "")


def _letters(rng: random.Random, cfg) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(cfg.min_length, cfg.max_length)))


def synthetic_pair(task: str, rng: random.Random, cfg) -> tuple[str, str]:
    """One (source, target) text pair of a synthetic task."""
    if task == "reverse":
        s = _letters(rng, cfg)
        return s, s[::-1]
    if task == "sort":
        s = _letters(rng, cfg)
        return s, "".join(sorted(s))
    if task in ("letter-set", "letter-set-shuffled"):
        s = _letters(rng, cfg)
        distinct = list(dict.fromkeys(s))  # the distinct letters, in order of first appearance (a set)
        if task == "letter-set-shuffled":  # the same set in an order unrelated to the source
            rng.shuffle(distinct)
        return s, "".join(distinct)
    top = 10**cfg.max_digits
    if task == "addition":
        a, b = rng.randrange(top), rng.randrange(top)
        return f"{a}+{b}", str(a + b)
    n = rng.randrange(top)
    if task == "words-to-digits":
        return number_words(n), str(n)
    if task == "digits-to-words":
        return str(n), number_words(n)
    raise ValueError(f"unknown synthetic task '{task}'")


def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    u = _bucket(key + "#split")
    return "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"


def synthetic_splits(cfg) -> dict[str, list[tuple[str, str]]]:
    """Distinct sources drawn with ``cfg.seed``, each in the split its text hashes to, until every
    split is full (or the task's space is exhausted: 40 draws per wanted pair at most)."""
    want = {"train": cfg.train_size, "val": cfg.eval_size, "test": cfg.eval_size}
    out: dict[str, list[tuple[str, str]]] = {k: [] for k in want}
    seen: set[str] = set()
    rng = random.Random(cfg.seed)
    for _ in range(40 * sum(want.values())):
        if all(len(out[k]) >= want[k] for k in want):
            break
        source, target = synthetic_pair(cfg.task, rng, cfg)
        if source in seen:
            continue
        seen.add(source)
        split = split_of(source, cfg.val_fraction, cfg.test_fraction)
        if len(out[split]) < want[split]:
            out[split].append((source, target))
    return out


def docstring_signature_pairs(path) -> list[tuple[str, str]]:
    """(first line of a function's docstring, ``name(arguments)``) for the functions of one file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old files
            tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            summary = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
            if summary:
                out.append((summary, f"{node.name}({ast.unparse(node.args)})"))
    return out


class Seq2SeqData(DataSource):
    """(source, target) text pairs of one task as :class:`~genloom.core.data.SourceTargetPairs`."""

    def __init__(self, config):
        self.config = config
        self.batch_size = config.batch_size
        self.eval_batch_size = config.eval_batch_size
        self.num_workers = config.num_workers
        self.info = {"modality": "text", "source_length": config.source_length, "target_length": config.target_length}
        self._texts: dict[str, list[tuple[str, str]]] | None = None
        self.files: dict[str, list[str]] = {}
        """The source files of each split (the mined task only)."""
        self._cache: dict[tuple, SourceTargetPairs] = {}

    def texts(self, split: str) -> list[tuple[str, str]]:
        """The split's (source, target) text pairs."""
        if self._texts is None:
            self._texts = self._mine() if self.config.task == "docstring-signature" else synthetic_splits(self.config)
        return self._texts[split]

    def _mine(self) -> dict[str, list[tuple[str, str]]]:
        cfg = self.config
        want = {"train": cfg.train_size, "val": cfg.eval_size, "test": cfg.eval_size}
        out: dict[str, list[tuple[str, str]]] = {k: [] for k in want}
        self.files = {k: [] for k in want}
        for name, path in sorted(stdlib_files(), key=lambda x: _bucket(x[0])):
            split = split_of(name, cfg.val_fraction, cfg.test_fraction)
            if len(out[split]) >= want[split]:
                continue
            pairs = [(s, t) for s, t in docstring_signature_pairs(path) if len(s.encode()) <= cfg.source_length and len(t.encode()) < cfg.target_length]
            if pairs:
                self.files[split].append(name)
                out[split].extend(pairs[: want[split] - len(out[split])])
        return out

    def load(self, split, tokenizer, ctx):
        key = (split, id(tokenizer))
        if key not in self._cache:
            cfg = self.config
            pairs = []
            for s, t in self.texts(split):
                src, tgt = list(tokenizer.encode(s)), list(tokenizer.encode(t))
                if len(src) <= cfg.source_length and len(tgt) < cfg.target_length:
                    pairs.append((src, tgt))
                elif cfg.task != "docstring-signature":
                    raise ConfigError(f"task '{cfg.task}' makes a pair of {len(src)} source and {len(tgt)} target tokens: raise data.source_length / data.target_length (the target needs one more for end-of-sequence)", path="data")
            pad = pad_id_of(tokenizer)
            self._cache[key] = SourceTargetPairs(pairs, cfg.source_length, cfg.target_length, pad_id=pad, eos_id=pad)
        return self._cache[key]


def build_seq2seq(config, ctx):
    return Seq2SeqData(config)
