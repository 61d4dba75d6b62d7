"""The ``edit-fusion`` data set: synthetic sentence fusion, an editing task with exact answers.

Two short sentences about one person become one (EdiT5's sentence-fusion task in miniature)::

    "tom runs. tom eats."   ->  "tom runs and eats."      (delete ". tom", insert " and")
    "tom runs. he eats."    ->  "tom runs and eats."      (delete ". he", insert " and")
    "he eats. tom runs."    ->  "tom runs and eats."      (the named sentence moves first)

Most target tokens are copied from the source; the edit needs deletions, one insertion and, for
the third template, re-ordering. Sources are drawn with a seed (names x ordered verb pairs x
templates: 2700 distinct sources), and each distinct source goes to one split by a stable hash of
its text, so no test source is seen in training. Samples are ``SourceTargetPairs`` (bytes or any
tokenizer), usable by any source-conditioned model (the autoregressive prefix LM too).
"""

from __future__ import annotations

import hashlib
import random

from genloom.core.data import DataSource, SourceTargetPairs, pad_id_of
from genloom.core.errors import ConfigError

NAMES = {"tom": "he", "bob": "he", "sam": "he", "max": "he", "ned": "he", "sue": "she", "eve": "she", "kim": "she", "liz": "she", "joy": "she"}
VERBS = ("runs", "eats", "sings", "reads", "naps", "swims", "hops", "sits", "cries", "waits")
TEMPLATES = 3


def fusion_pair(name: str, first: str, second: str, template: int) -> tuple[str, str]:
    """One (source, target) pair: ``name`` does ``first`` and ``second``."""
    pronoun = NAMES[name]
    target = f"{name} {first} and {second}."
    if template == 0:
        return f"{name} {first}. {name} {second}.", target
    if template == 1:
        return f"{name} {first}. {pronoun} {second}.", target
    if template == 2:
        return f"{pronoun} {second}. {name} {first}.", target
    raise ValueError(f"template must be in 0 .. {TEMPLATES - 1}, got {template}")


def split_of(text: str, val_fraction: float, test_fraction: float) -> str:
    u = int.from_bytes(hashlib.sha256((text + "#split").encode()).digest()[:8], "big") / 2**64
    return "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"


def fusion_splits(cfg) -> dict[str, list[tuple[str, str]]]:
    """Every distinct pair in a seeded order, each in the split its source hashes to, each split cut
    at its size."""
    pairs = [fusion_pair(n, a, b, t) for n in NAMES for a in VERBS for b in VERBS if a != b for t in range(TEMPLATES)]
    random.Random(cfg.seed).shuffle(pairs)
    want = {"train": cfg.train_size, "val": cfg.eval_size, "test": cfg.eval_size}
    out: dict[str, list[tuple[str, str]]] = {k: [] for k in want}
    for source, target in pairs:
        split = split_of(source, cfg.val_fraction, cfg.test_fraction)
        if len(out[split]) < want[split]:
            out[split].append((source, target))
    return out


class EditFusionData(DataSource):
    """Sentence-fusion pairs as :class:`~genloom.core.data.SourceTargetPairs`."""

    def __init__(self, config):
        self.config = config
        self.batch_size = config.batch_size
        self.eval_batch_size = config.eval_batch_size
        self.num_workers = 0
        self.info = {"modality": "text", "source_length": config.source_length, "target_length": config.target_length}
        self._texts: dict[str, list[tuple[str, str]]] | None = None
        self._cache: dict[tuple, SourceTargetPairs] = {}

    def texts(self, split: str) -> list[tuple[str, str]]:
        """The split's (source, target) text pairs."""
        if self._texts is None:
            self._texts = fusion_splits(self.config)
        return self._texts[split]

    def load(self, split, tokenizer, ctx):
        key = (split, id(tokenizer))
        if key not in self._cache:
            cfg = self.config
            pairs = []
            for s, t in self.texts(split):
                src, tgt = list(tokenizer.encode(s)), list(tokenizer.encode(t))
                if len(src) > cfg.source_length or len(tgt) >= cfg.target_length:
                    raise ConfigError(f"a pair has {len(src)} source and {len(tgt)} target tokens: raise data.source_length / data.target_length (the target needs one more for end-of-sequence)", path="data")
                pairs.append((src, tgt))
            pad = pad_id_of(tokenizer)
            self._cache[key] = SourceTargetPairs(pairs, cfg.source_length, cfg.target_length, pad_id=pad, eos_id=pad)
        return self._cache[key]


def build(config, ctx):
    return EditFusionData(config)
