"""Embedded and local text data: split by file, windows cover every token, clear path errors."""

import pytest
import torch

from genloom.core import config as config_mod
from genloom.core.data import TokenWindows
from genloom.core.errors import ConfigError
from genloom.core.model import assemble

MODEL = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}, "objective": {"name": "next-token"}}


def build(data):
    v = config_mod.validate(config_mod.compose(None, None, base={**MODEL, "data": data}))
    return assemble(v)


def test_text_files_split_by_file_and_windows_score_every_byte(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i}.txt").write_text(f"file {i} " * (i + 3))
    b = build({"name": "text-files", "paths": [str(tmp_path)], "seq_len": 16, "val_fraction": 0.2, "test_fraction": 0.2})
    src = b.data
    names = {split: {p.name for p in src.files[split]} for split in ("train", "val", "test")}
    assert names["train"] and names["val"] and names["test"]
    assert not (names["train"] & names["val"]) and not (names["val"] & names["test"])
    val = src.load("val", b.model.tokenizer, b.ctx)
    total = sum(len(d) + 1 for d in src.documents("val"))  # + end-of-document ids
    scored = sum(int(val[i]["mask"].sum()) for i in range(len(val)))
    assert scored == total - 1  # every token after the first is a target exactly once


def test_token_windows_keep_the_tail_only_for_evaluation():
    stream = torch.arange(35).numpy()
    train = TokenWindows(stream, 8)
    evaluation = TokenWindows(stream, 8, keep_tail=True)
    assert len(train) == 4 and len(evaluation) == 5
    last = evaluation[4]
    assert last["mask"].sum() == 34 - 32 and last["ids"][:3].tolist() == [32, 33, 34]


def test_text_files_bad_path_names_the_config_path(tmp_path):
    with pytest.raises(ConfigError) as err:
        build({"name": "text-files", "paths": [str(tmp_path / "missing")]})
    assert err.value.path == "data.paths[0]"


def test_pystdlib_splits_are_disjoint_and_deterministic():
    a = build({"name": "pystdlib", "seq_len": 32, "max_train_bytes": 10000, "max_eval_bytes": 5000}).data
    b = build({"name": "pystdlib", "seq_len": 32, "max_train_bytes": 10000, "max_eval_bytes": 5000}).data
    assert a.files == b.files
    assert not set(a.files["train"]) & set(a.files["val"])
    assert len(a.files["val"]) > 10
