"""``genloom generate``: typed options, every option takes effect or is refused, decoder overrides
go through the config (genloom_configure sees them), clean exit 2 for every bad input."""

from dataclasses import dataclass

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genloom.core import hookimpl, records
from genloom.core.cli import main
from genloom.core.hf import import_llama
from genloom.core.plugins import registry_with, set_registry


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen_cli")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=64, eos_token_id=None)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp / "hf")
    return str(import_llama(tmp / "hf", tmp / "run"))


def gen(capsys, *argv):
    rc = main(["generate", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


@pytest.mark.parametrize("option,named", [
    ("max_new_tokens=abc", "max_new_tokens"),
    ("seed=abc", "seed"),
    ("num_samples=-1", "num_samples"),
    ("max_new_tokens=-2", "max_new_tokens"),
    ("top_k=-1", "top_k"),
    ("num_beams=0", "num_beams"),
    ("temperature=0", "temperature"),
    ("prompt=1 2 \udcff", "prompt"),  # undecodable bytes on the command line
    ("prompt=1 x", "prompt"),
    ("tempreature=0.5", "temperature"),  # did-you-mean, with the list of options
    ("max_new_tokens=64", "64 positions"),
    ("temperature=0.5", "do_sample"),  # the run decodes greedily: temperature would change nothing
    ("length_penalty=2", "beam"),
    ("justaword", "key=value"),
    ("out=/nonexistent-dir/x/out.json", "out"),
])
def test_bad_options_exit_2_naming_the_option(capsys, run_dir, option, named):
    rc, _, err = gen(capsys, run_dir, option)
    assert rc == 2 and named in err, err


def test_options_take_effect_and_json_goes_anywhere(capsys, run_dir):
    rc, greedy, _ = gen(capsys, run_dir, "prompt=1 2 3", "max_new_tokens=6")
    assert rc == 0
    # sampling restricted to the top token is greedy again: do_sample, top_k reach the sampler
    rc, out, _ = gen(capsys, run_dir, "--json", "prompt=1 2 3", "max_new_tokens=6", "do_sample=true", "top_k=1", "temperature=0.5")
    assert rc == 0 and out.splitlines()[0] == greedy.strip()
    assert '"seed"' in out.splitlines()[-1]
    rc, out, _ = gen(capsys, run_dir, "prompt=1 2 3", "max_new_tokens=6", "do_sample=true", "seed=4")
    rc, again, _ = gen(capsys, run_dir, "prompt=1 2 3", "seed=4", "max_new_tokens=6", "do_sample=true")
    assert out == again
    rc, out, _ = gen(capsys, run_dir, "prompt=1 2 3", "max_new_tokens=4", "num_beams=3", "num_return_sequences=2")
    assert rc == 0 and len(out.splitlines()) == 2
    first = greedy.split()[3]
    rc, out, _ = gen(capsys, run_dir, "prompt=1 2 3", "max_new_tokens=6", f"eos_token_id=[{first}]")
    assert out.split()[3:] == [first]


@dataclass
class RewardConfig:
    weight: float = 1.0


class Extension:
    seen: list = []

    @hookimpl
    def genloom_component_kinds(self):
        return [records.ComponentKind("reward", "Scores a sequence", config_key="reward")]

    @hookimpl
    def genloom_components(self):
        return [records.Component(kind="reward", name="length", factory="genloom.core.generation:Decoder", config=RewardConfig)]

    @hookimpl
    def genloom_decoders(self):
        return [records.decoder("broken", "genloom_no_such_module_anywhere:build", RewardConfig, "A decoder whose module fails to import.")]

    @hookimpl
    def genloom_configure(self, config):
        Extension.seen.append((config.get("decoder", {}).get("name"), config.get("reward")))


@pytest.fixture
def extension():
    Extension.seen = []
    old = set_registry(registry_with(Extension()))
    yield Extension
    set_registry(old)


def test_decoder_override_reaches_genloom_configure_and_import_failures_are_clean(capsys, run_dir, extension):
    rc, _, err = gen(capsys, run_dir, "prompt=1", "max_new_tokens=2", "decoder=sampling", "decoder.nope=1")
    assert rc == 2 and "nope" in err
    rc, _, _ = gen(capsys, run_dir, "prompt=1", "max_new_tokens=2", "decoder=sampling")
    assert rc == 0 and extension.seen[-1][0] == "sampling"
    rc, _, err = gen(capsys, run_dir, "prompt=1", "max_new_tokens=2", "decoder=broken")
    assert rc == 2 and "could not import" in err and "genloom_no_such_module_anywhere" in err
    rc, _, err = gen(capsys, run_dir, "prompt=1", "max_new_tokens=2", "reward.name=length", "reward.weight=2")
    assert rc == 0, err
    assert extension.seen[-1][1] == {"name": "length", "weight": 2}


def test_out_is_written_atomically_and_an_existing_file_is_kept_unless_overwrite(capsys, run_dir, tmp_path):
    import json

    out = tmp_path / "ids.json"
    rc, _, _ = gen(capsys, run_dir, "prompt=1 2 3", "max_new_tokens=3", f"out={out}")
    assert rc == 0 and len(json.loads(out.read_text())["ids"][0]) == 3
    config = tmp_path / "config.yaml"  # say, a run's own file
    config.write_text("keep me")
    rc, _, err = gen(capsys, run_dir, "prompt=1 2 3", "max_new_tokens=3", f"out={config}")
    assert rc == 2 and "already exists" in err and "overwrite=true" in err and config.read_text() == "keep me"
    rc, _, _ = gen(capsys, run_dir, "prompt=1 2 3", "max_new_tokens=2", f"out={out}", "overwrite=true")
    assert rc == 0 and len(json.loads(out.read_text())["ids"][0]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "ids.json"]  # no temporary file left
