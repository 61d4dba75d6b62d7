"""The embedded structure task: spans, relations and coreference in Python standard-library code.

Each example is a window of up to ``max_lines`` consecutive lines of one standard-library file
(leading indentation removed, ASCII only, at most ``source_length`` bytes). Its exact structure
comes from the file's syntax tree (:mod:`ast`), restricted to nodes on one line of the window:

- spans, labelled by node type: ``store`` (a name bound here: assignment target, loop variable,
  parameter), ``load`` (a name read), ``string`` and ``number`` (literals), ``call`` (a whole call
  expression, which nests the spans of its callee and arguments);
- links, coreference in the text: every name mention points to the previous mention of the same
  identifier in the window, with relation ``def`` when that mention binds it (``store``) and
  ``coref`` otherwise.

Files are split into train/val/test by a stable hash of their path, so no line of a test file is
seen in training. Windows whose structure needs more than the tokenizer's ``max_spans`` spans are
left out.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
import warnings
from pathlib import Path

from genloom.core.data import DataSource, SourceTargetPairs, pad_id_of
from genloom.core.errors import ConfigError

from .actions import ActionLayout, Link, Span, Structure, encode

from . import CODE_LABELS as LABELS
from . import CODE_RELATIONS as RELATIONS
from . import check_layout


def bucket(name: str) -> float:
    """A stable number in [0, 1) for a name (the split never depends on the machine's file order)."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 2**32


def split_of(name: str, val_fraction: float, test_fraction: float) -> str:
    u = bucket(name + "#split")
    return "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"


def stdlib_files() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel or "__pycache__" in rel or rel.startswith(("test/", "lib2to3/tests/", "idlelib/idle_test/")):
            continue
        out.append((rel, path))
    return sorted(out, key=lambda x: bucket(x[0]))


def _items(tree) -> list[tuple[int, int, int, str, str | None]]:
    """(line, column, end column, label, identifier) of every one-line node that makes a span."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            continue
        line, end_line = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        if line is None or line != end_line:
            continue
        c, e = node.col_offset, node.end_col_offset
        if isinstance(node, ast.Name):
            out.append((line, c, e, "store" if isinstance(node.ctx, ast.Store) else "load", node.id))
        elif isinstance(node, ast.arg):
            out.append((line, c, c + len(node.arg), "store", node.arg))
        elif isinstance(node, ast.Constant) and type(node.value) in (str, bytes):
            out.append((line, c, e, "string", None))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, complex):
            out.append((line, c, e, "number", None))
        elif isinstance(node, ast.Call):
            out.append((line, c, e, "call", None))
    return out


def _fstring_lines(tree) -> set[int]:
    """Lines holding an f-string (its inner nodes' positions differ between Python versions)."""
    out: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.JoinedStr):
            out.update(range(n.lineno, n.end_lineno + 1))
    return out


def _multiline_lines(tree) -> set[int]:
    """Lines inside multi-line string literals (docstrings): text, not code."""
    out: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, (str, bytes)) and n.end_lineno != n.lineno:
            out.update(range(n.lineno, n.end_lineno + 1))
    return out


def file_examples(path: Path, source_length: int, max_lines: int, max_spans: int) -> list[tuple[str, Structure]]:
    """The (text, structure) windows of one file (see the module docstring)."""
    try:
        raw = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(raw)
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        return []
    lines = raw.split(b"\n")
    skip = _multiline_lines(tree) | _fstring_lines(tree)
    by_line: dict[int, list] = {}
    for item in _items(tree):
        by_line.setdefault(item[0], []).append(item)
    out = []
    i = 0
    while i < len(lines):
        chunk: list[tuple[int, bytes, int]] = []  # (line number, stripped text, indentation removed)
        j = i
        while j < len(lines) and len(chunk) < max_lines:
            text = lines[j].rstrip(b"\r")
            stripped = text.lstrip(b" \t")
            good = stripped and not stripped.startswith(b"#") and (j + 1) not in skip and stripped.isascii()
            if not good:
                break
            size = sum(len(c[1]) + 1 for c in chunk) + len(stripped)
            if size > source_length:
                break
            chunk.append((j + 1, stripped, len(text) - len(stripped)))
            j += 1
        if not chunk:
            i += 1
            continue
        i = j
        example = _window(chunk, by_line, max_spans)
        if example is not None:
            out.append(example)
    return out


def _window(chunk, by_line, max_spans: int):
    text = b"\n".join(c[1] for c in chunk)
    spans: list[tuple[Span, str | None]] = []
    offset = 0
    for line, stripped, indent in chunk:
        for _, c, e, label, ident in by_line.get(line, []):
            s, t = offset + c - indent, offset + e - indent
            if not 0 <= s < t <= offset + len(stripped):
                return None
            piece = text[s:t]
            if ident is not None and piece != ident.encode():
                return None
            spans.append((Span(s, t, label), ident))
        offset += len(stripped) + 1
    if not spans or len({s for s, _ in spans}) > max_spans:
        return None
    mentions = sorted({(s, ident) for s, ident in spans if ident is not None})
    last: dict[str, Span] = {}
    links = []
    for span, ident in mentions:
        if ident in last:
            links.append(Link(span, last[ident], "def" if last[ident].label == "store" else "coref"))
        last[ident] = span
    structure = Structure.of((s for s, _ in spans), links)
    try:
        from .actions import ActionLayout, check_structure

        check_structure(structure, len(text), ActionLayout(LABELS, RELATIONS, max_spans))
    except ValueError:
        return None
    return text.decode("ascii"), structure


_MINED: dict = {}


class AspCodeData(DataSource):
    """(input text, action sequence) pairs as :class:`~genloom.core.data.SourceTargetPairs`:
    the source block holds the text's bytes, the target its structure's canonical action sequence
    in the tokenizer's layout."""

    def __init__(self, config):
        self.config = config
        self.batch_size = config.batch_size
        self.eval_batch_size = config.eval_batch_size
        self.num_workers = config.num_workers
        self.info = {"modality": "text", "source_length": config.source_length, "target_length": config.target_length}
        self._examples: dict = {}
        self.files: dict[str, list[str]] = {}
        """The source files of each split."""
        self._cache: dict[tuple, SourceTargetPairs] = {}

    def examples(self, split: str, layout: ActionLayout) -> list[tuple[str, Structure]]:
        """The split's (text, structure) examples whose action sequence fits ``target_length``
        (mined once per process for a config and layout)."""
        if layout not in self._examples:
            cfg = self.config
            key = (cfg.source_length, cfg.target_length, cfg.max_lines, cfg.max_per_file, cfg.train_size, cfg.eval_size, cfg.val_fraction, cfg.test_fraction, layout)
            if key not in _MINED:
                _MINED[key] = (self._mine(layout), self.files)
            self._examples[layout], self.files = _MINED[key]
        return self._examples[layout][split]

    def _mine(self, layout):
        check_layout(layout, "tokenizer")
        cfg = self.config
        want = {"train": cfg.train_size, "val": cfg.eval_size, "test": cfg.eval_size}
        out: dict[str, list] = {k: [] for k in want}
        self.files = {k: [] for k in want}
        for name, path in stdlib_files():
            if all(len(out[k]) >= want[k] for k in want):
                break
            split = split_of(name, cfg.val_fraction, cfg.test_fraction)
            if len(out[split]) >= want[split]:
                continue
            got = []
            for text, structure in file_examples(path, cfg.source_length, cfg.max_lines, layout.max_spans):
                if len(encode(structure, text.encode(), layout)) + 1 <= cfg.target_length:
                    got.append((text, structure))
            if got:
                self.files[split].append(name)
                out[split].extend(got[: min(cfg.max_per_file, want[split] - len(out[split]))])
        return out

    def load(self, split, tokenizer, ctx):
        key = (split, id(tokenizer))
        if key not in self._cache:
            layout = getattr(tokenizer, "layout", None)
            if layout is None:
                raise ConfigError(f"asp-code needs the 'asp-bytes' tokenizer (its vocabulary holds the action ids), got {type(tokenizer).__name__}", path="tokenizer")
            pairs = [(list(text.encode()), encode(structure, text.encode(), layout)) for text, structure in self.examples(split, layout)]
            pad = pad_id_of(tokenizer)
            self._cache[key] = SourceTargetPairs(pairs, self.config.source_length, self.config.target_length, pad_id=pad, eos_id=pad)
        return self._cache[key]


def layout_of(ctx, path: str):
    """The action layout of the model's ``asp-bytes`` tokenizer, or a ConfigError at ``path``."""
    tok = ctx.get("tokenizer") if hasattr(ctx, "get") else None
    layout = getattr(tok, "layout", None)
    if layout is None:
        raise ConfigError(f"needs the 'asp-bytes' tokenizer (its vocabulary holds the action ids), got {type(tok).__name__}", path=path)
    return layout


def build(config, ctx):
    return AspCodeData(config)
