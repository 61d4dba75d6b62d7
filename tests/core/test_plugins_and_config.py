"""Plugin loading, the registry and config validation: every bad input names the config path."""

import json
import os
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass

import pytest

from genloom.core import config as config_mod
from genloom.core import hookimpl, records
from genloom.core.errors import ConfigError, PluginError
from genloom.core.plugins import get_registry, registry_with

GOOD = {
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2},
    "objective": {"name": "next-token"},
}


def validate(extra=None, overrides=None, registry=None):
    base = {**GOOD, **(extra or {})}
    return config_mod.validate(config_mod.compose(None, overrides, base=base), registry or get_registry())


def run_cli(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "genloom", *args], capture_output=True, text=True, env=e, timeout=120)


def test_registry_lists_every_core_kind_with_provenance():
    reg = get_registry()
    kinds = {c.kind for c in reg.components()}
    assert {"tokenizer", "head", "backbone", "objective", "decoder", "kernel"} <= kinds
    rec = reg.get("backbone", "transformer")
    assert rec.plugin == "baseline" and rec.distribution == "genloom" and rec.version


def test_valid_config_builds_dataclasses():
    v = validate()
    assert v.components["backbone"].config.d_model == 32
    assert v.sections["trainer"].max_steps == 1000


@pytest.mark.parametrize(
    "extra,overrides,path,needle",
    [
        ({}, ["backbone.name=transfomer"], "backbone.name", "Did you mean 'transformer'"),
        ({}, ["backbone.n_layrs=2"], "backbone.n_layrs", "Did you mean 'n_layers'"),
        ({}, ["backbone.n_layers=two"], "backbone.n_layers", "is not a valid int"),
        ({"processors": [{"name": "top-p", "p": 2.0}]}, [], "processors[0].p", "allowed > 0 and <= 1"),
        ({"trainer": {"precision": "fp8"}}, [], "trainer.precision", "precision must be one of"),
        ({"kernels": {"attention": "sdpx"}}, [], "kernels.attention", "Did you mean 'sdpa'"),
        ({"optimzer": {}}, [], "optimzer", "Did you mean 'optimizer'"),
    ],
)
def test_bad_inputs_name_the_path(extra, overrides, path, needle):
    with pytest.raises(ConfigError) as err:
        validate(extra, overrides)
    assert err.value.path == path
    assert needle in str(err.value)


def test_missing_required_field():
    @dataclass
    class NeedsRate:
        rate: float

    class Plugin:
        @hookimpl
        def genloom_logits_processors(self):
            return [records.processor("needs-rate", "x:y", NeedsRate)]

    reg = registry_with(Plugin())
    with pytest.raises(ConfigError, match="missing required field.*'rate'") as err:
        validate({"processors": [{"name": "needs-rate"}]}, registry=reg)
    assert err.value.path == "processors[0]"


def test_ambiguous_name_names_both_plugins_and_qualified_name_picks_one():
    def make(tag):
        mod = types.ModuleType(f"plug_{tag}")

        @hookimpl
        def genloom_decoders():
            return [records.decoder("twin", f"mod_{tag}:build", summary=tag)]

        mod.genloom_decoders = genloom_decoders
        return mod

    reg = registry_with(make("a"), make("b"))
    with pytest.raises(ConfigError, match="more than one plugin.*plug_a:twin.*plug_b:twin"):
        reg.get("decoder", "twin")
    assert reg.get("decoder", "plug_b:twin").summary == "b"


def test_misspelled_hook_fails_loudly():
    mod = types.ModuleType("typo_plugin")

    @hookimpl
    def genloom_backbone():  # missing the final s
        return []

    mod.genloom_backbone = genloom_backbone
    reg = registry_with(mod)  # isolated like an import failure: marked failed, the rest keep working
    assert "genloom_backbone" in reg.plugins["typo_plugin"].error and reg.get("backbone", "transformer")
    os.environ["GENLOOM_STRICT_PLUGINS"] = "1"
    try:
        with pytest.raises(PluginError, match="genloom_backbone"):
            registry_with(mod)
    finally:
        del os.environ["GENLOOM_STRICT_PLUGINS"]


def test_plugin_can_add_a_component_kind():
    @dataclass
    class RetrieverConfig:
        k: int = 4

    class Plugin:
        @hookimpl
        def genloom_component_kinds(self):
            return [records.ComponentKind("retriever", "Retrieves context", config_key="retriever")]

        @hookimpl
        def genloom_components(self):
            return [records.Component(kind="retriever", name="bm25", factory="x:y", config=RetrieverConfig)]

    reg = registry_with(Plugin())
    assert [c.name for c in reg.components("retriever")] == ["bm25"]
    v = validate({"retriever": {"name": "bm25", "k": 9}}, registry=reg)
    assert v.components["retriever"].config.k == 9
    with pytest.raises(ConfigError, match="Did you mean 'bm25'"):
        validate({"retriever": {"name": "bm52"}}, registry=reg)


def test_addhooks_lets_a_plugin_add_hookspecs():
    import pluggy

    spec = pluggy.HookspecMarker("genloom")

    class Specs:
        @spec
        def genloom_reward_models(self):
            """A plugin's own hook."""

    class Plugin:
        @hookimpl
        def genloom_addhooks(self, pluginmanager):
            pluginmanager.add_hookspecs(Specs)

    class Impl:
        @hookimpl
        def genloom_reward_models(self):
            return ["ok"]

    reg = registry_with(Plugin(), Impl())
    assert reg.pm.hook.genloom_reward_models() == [["ok"]]


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone:\n  name: transformer\n  d_model: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        config_mod.compose(bad)
    assert "bad.yaml:" in str(err.value) and "malformed YAML" in str(err.value)


def test_defaults_includes_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("backbone: {name: transformer, d_model: 64, n_heads: 2}\nseed: 3\n")
    (tmp_path / "run.yaml").write_text("defaults: [base.yaml]\nbackbone: {n_layers: 1}\n")
    cfg = config_mod.compose(tmp_path / "run.yaml", ["backbone.d_model=32"])
    assert cfg.backbone.d_model == 32 and cfg.backbone.n_layers == 1 and cfg.seed == 3
    assert "defaults" not in cfg


def test_cli_errors_exit_2_without_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(GOOD))
    r = run_cli("config", str(cfg), "backbone.name=transfomer")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "Did you mean 'transformer'" in r.stderr
    r = run_cli("config", str(cfg))
    assert r.returncode == 0, r.stderr


def _write_plugin(tmp_path, body, name="brokenplug"):
    pkg = tmp_path / "site"
    (pkg / f"{name}-0.1.dist-info").mkdir(parents=True)
    (pkg / f"{name}-0.1.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (pkg / f"{name}-0.1.dist-info" / "entry_points.txt").write_text(f"[genloom]\n{name} = {name}\n")
    (pkg / f"{name}.py").write_text(textwrap.dedent(body))
    return pkg


def test_broken_plugin_is_reported_and_others_keep_working(tmp_path):
    site = _write_plugin(tmp_path, "raise ImportError('needs a missing library')\n")
    env = {"PYTHONPATH": str(site)}
    r = run_cli("components", "backbone", "--json", env=env)
    assert r.returncode == 0
    assert "plugin 'brokenplug' (brokenplug 0.1) failed to load: ImportError: needs a missing library" in r.stderr
    assert "transformer" in r.stdout
    r = run_cli("plugins", "--json", "--all", env=env)
    broken = [p for p in json.loads(r.stdout) if p["name"] == "brokenplug"]
    assert broken and broken[0]["ok"] is False
    r = run_cli("components", env={**env, "GENLOOM_STRICT_PLUGINS": "1"})
    assert r.returncode == 2 and "brokenplug" in r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({**GOOD, "decoder": {"name": "brokendecoder"}}))
    r = run_cli("config", str(cfg), env=env)
    assert r.returncode == 2 and "failed to load" in r.stderr and "brokenplug" in r.stderr


def test_load_plugins_and_disable_plugin_control_loading():
    r = run_cli("components", "--json", env={"GENLOOM_LOAD_PLUGINS": ""})
    assert json.loads(r.stdout) == []
    r = run_cli("components", "--json", env={"GENLOOM_LOAD_PLUGINS": "baseline"})
    assert {c["plugin"] for c in json.loads(r.stdout)} == {"baseline"}
    r = run_cli("--disable-plugin", "kernels", "components", "kernel", "--json")
    assert not [c for c in json.loads(r.stdout) if c["plugin"] == "kernels"]  # technique plugins may add kernels of their own


def test_listing_commands_do_not_import_torch(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(GOOD))
    code = textwrap.dedent(
        f"""
        import sys
        from genloom.core.cli import main
        for argv in (["plugins", "--json"], ["components", "--json"], ["describe", "backbone", "transformer"], ["config", {str(cfg)!r}], ["--help"]):
            try:
                main(argv)
            except SystemExit:
                pass
        heavy = [m for m in ("torch", "lightning", "pytorch_lightning") if m in sys.modules]
        print("HEAVY", heavy)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_import_genloom_loads_no_plugin():
    r = subprocess.run([sys.executable, "-c", "import sys, genloom; print([m for m in sys.modules if m.startswith('genloom.plugins') or m == 'torch'])"], capture_output=True, text=True)
    assert r.stdout.strip() == "[]"


def test_plugins_json_lists_distribution_version_paper_components():
    r = run_cli("plugins", "--json")
    plugins = {p["name"]: p for p in json.loads(r.stdout)}
    assert plugins["baseline"]["distribution"] == "genloom" and plugins["baseline"]["components"]


def test_components_json_covers_all_six_kinds_and_describe_gives_fields():
    r = run_cli("components", "--json")
    kinds = {c["kind"] for c in json.loads(r.stdout)}
    assert {"tokenizer", "backbone", "head", "objective", "decoder", "kernel"} <= kinds
    r = run_cli("describe", "backbone", "transformer", "--json")
    info = json.loads(r.stdout)
    fields = {f["name"]: f for f in info["fields"]}
    assert fields["n_kv_heads"]["type"] == "int | null" and "grouped-query" in fields["n_kv_heads"]["doc"]
    r = run_cli("describe", "backbone", "transfomer")
    assert r.returncode == 2 and "Did you mean 'transformer'" in r.stderr


def test_kernels_command_lists_ops_backends_and_usability():
    r = run_cli("kernels", "--json")
    assert r.returncode == 0, r.stderr
    rows = {(x["op"], x["backend"]): x for x in json.loads(r.stdout)}
    assert rows[("attention", "reference")]["usable"]
    assert rows[("attention", "xformers")]["usable"] is False and "CUDA" in rows[("attention", "xformers")]["reason"]
    assert sum(x["default"] for x in rows.values() if x["op"] == "attention") == 1


def test_train_subcommand_parses_its_own_options():
    r = run_cli("train", "--help")
    assert r.returncode == 0 and "--resume" in r.stdout
    r = run_cli("--disable-plugin", "var", "train", "--resume", "no/such/run")
    assert r.returncode == 2 and "Traceback" not in r.stderr
