"""``genloom serve``: a JSONL file of requests in, a JSONL file of completions out. Every line is
checked before the model is loaded (the error names the line, the field and what is allowed), the
output is written atomically and never over an existing file unless --overwrite; each completion
equals what ``generate`` gives its request alone."""

import json

import pytest
import yaml

from genloom.core.cli import main
from genloom.core.generation import load

CONFIG = {
    "seed": 0,
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
    "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
    "objective": {"name": "next-token"},
    "decoder": {"name": "greedy"},
}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return str(path)


def write(tmp_path, lines):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


def serve(capsys, *argv):
    rc = main(["serve", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_serve_writes_each_requests_solo_output(config, tmp_path, capsys):
    requests = [
        {"id": "a", "prompt": "def f(", "max_new_tokens": 6},
        {"prompt_ids": [104, 105], "max_new_tokens": 3, "arrival": 2},
        {"id": 7, "prompt": "import", "max_new_tokens": 0},
        {"id": "s", "prompt": "x = ", "max_new_tokens": 5, "seed": 3, "arrival": 1},
    ]
    src, out = write(tmp_path, requests[:2] + [""] + requests[2:]), tmp_path / "out.jsonl"  # a blank line is skipped
    rc, stdout, err = serve(capsys, config, "--requests", src, "--out", str(out), "--no-progress", "--json")
    assert rc == 0, err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == ["a", 2, 7, "s"]  # the default id is the line number
    gen = load(config)
    prompts = [list(gen.encode("def f(")), [104, 105], list(gen.encode("import")), list(gen.encode("x = "))]
    for g, r, p in zip(got, requests, prompts):
        assert g["ids"] == gen.generate(p, max_new_tokens=r["max_new_tokens"]).ids[0]
        assert g["tokens"] == len(g["ids"]) and g["arrival"] == r.get("arrival", 0)
    metrics = json.loads(stdout)
    assert metrics["requests"] == 4 and metrics["prefills"] == 3


def test_sampling_seeds_default_to_seed_plus_index(config, tmp_path, capsys):
    src = write(tmp_path, [{"prompt": "ab", "max_new_tokens": 6}, {"prompt": "ab", "max_new_tokens": 6}])
    out = tmp_path / "out.jsonl"
    assert serve(capsys, config, "do_sample=true", "seed=10", "--requests", src, "--out", str(out), "--no-progress")[0] == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["seed"] for g in got] == [10, 11]
    gen = load(config)
    assert got[1]["ids"] == gen.generate(list(gen.encode("ab")), max_new_tokens=6, do_sample=True, seed=11).ids[0]


def test_refuses_to_overwrite_unless_told(config, tmp_path, capsys):
    src, out = write(tmp_path, [{"prompt": "a", "max_new_tokens": 2}]), tmp_path / "out.jsonl"
    out.write_text("keep me")
    rc, _, err = serve(capsys, config, "--requests", src, "--out", str(out), "--no-progress")
    assert rc == 2 and "exists; pass --overwrite" in err and out.read_text() == "keep me"
    assert serve(capsys, config, "--requests", src, "--out", str(out), "--overwrite", "--no-progress")[0] == 0
    assert json.loads(out.read_text())["tokens"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


@pytest.mark.parametrize("line,message", [
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: must be a JSON object"),
    ({"prompt": "a", "max_new_token": 3}, "line 2: unknown field 'max_new_token' (did you mean 'max_new_tokens'?)"),
    ({"max_new_tokens": 3}, "line 2: give exactly one of the fields 'prompt'"),
    ({"prompt": "a", "prompt_ids": [1]}, "line 2: give exactly one of the fields 'prompt'"),
    ({"prompt": 5}, "line 2: field 'prompt' must be text"),
    ({"prompt_ids": [1, -2]}, "line 2: field 'prompt_ids' must be"),
    ({"prompt_ids": []}, "line 2: field 'prompt_ids' must be"),
    ({"prompt": "a", "max_new_tokens": -1}, "line 2: field 'max_new_tokens' must be an integer >= 0, got -1"),
    ({"prompt": "a", "seed": "x"}, "line 2: field 'seed' must be an integer >= 0"),
    ({"prompt": "a", "arrival": 1.5}, "line 2: field 'arrival' must be an integer >= 0"),
    ({"prompt": "a", "stop": "x"}, "line 2: field 'stop' must be a list of non-empty strings"),
    ({"id": "q", "prompt": "b"}, "line 2: field 'id' \"q\" is already the id of line 1"),
    ({"id": [1], "prompt": "b"}, "line 2: field 'id' must be a string or an integer"),
    ({"prompt_ids": [1, 999]}, "line 2: field 'prompt_ids' holds id 999, beyond the vocabulary"),
])
def test_bad_lines_are_named(config, tmp_path, capsys, line, message):
    src, out = write(tmp_path, [{"id": "q", "prompt": "ok"}, line]), tmp_path / "out.jsonl"
    rc, _, err = serve(capsys, config, "--requests", src, "--out", str(out), "--no-progress")
    assert rc == 2 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["num_beams=2"], "option 'num_beams' does not apply to genloom serve"),
    (["prompt=x"], "option 'prompt' does not apply"),
    (["--max-batch-size", "0"], "--max-batch-size must be >= 1"),
    (["decoder=beam"], "one-token decoders"),
])
def test_bad_options(config, tmp_path, capsys, argv, message):
    src = write(tmp_path, [{"prompt": "a"}])
    rc, _, err = serve(capsys, config, "--requests", src, "--out", str(tmp_path / "o.jsonl"), "--no-progress", *argv)
    assert rc == 2 and message in err, err


def test_missing_or_empty_requests_file(config, tmp_path, capsys):
    out = str(tmp_path / "o.jsonl")
    rc, _, err = serve(capsys, config, "--requests", str(tmp_path / "none.jsonl"), "--out", out)
    assert rc == 2 and "no such file" in err
    (tmp_path / "empty.jsonl").write_text("\n\n")
    rc, _, err = serve(capsys, config, "--requests", str(tmp_path / "empty.jsonl"), "--out", out)
    assert rc == 2 and "holds no request" in err


def test_source_conditioned_requests(tmp_path, capsys):
    path = tmp_path / "s2s.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "data": {"name": "seq2seq", "source_length": 6, "target_length": 7, "max_length": 6, "train_size": 10, "eval_size": 2}}))
    src, out = write(tmp_path, [{"source": "abc", "max_new_tokens": 5}, {"source": "hello", "prompt": "o", "max_new_tokens": 4, "arrival": 1}]), tmp_path / "out.jsonl"
    rc, _, err = serve(capsys, str(path), "--requests", src, "--out", str(out), "--no-progress")
    assert rc == 0, err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    gen = load(str(path))
    assert got[0]["ids"] == gen.generate(source=[list(gen.encode("abc"))], max_new_tokens=5).ids[0]
    assert got[1]["ids"] == gen.generate([list(gen.encode("o"))], source=[list(gen.encode("hello"))], max_new_tokens=4).ids[0]
    # a source for a model that has none, and a source longer than the block, are named
    rc, _, err = serve(capsys, str(path), "--requests", write(tmp_path, [{"source": "abcdefghij"}]), "--out", str(out), "--overwrite", "--no-progress")
    assert rc == 2 and "line 1: field 'source'" in err


def test_source_needs_a_conditioned_model(config, tmp_path, capsys):
    rc, _, err = serve(capsys, config, "--requests", write(tmp_path, [{"source": "abc"}]), "--out", str(tmp_path / "o.jsonl"), "--no-progress")
    assert rc == 2 and "line 1: field 'source' needs a source-conditioned model" in err
