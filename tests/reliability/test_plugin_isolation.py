"""Misbehaving plugins cost one line and never take the CLI down: a hook returning something that
is not a list of records, a hook nobody declares (its providing plugin is not installed), a
component of an undeclared kind, a component whose module fails to import, and a newly installed
plugin offering a name an existing run uses. The plugins come from a real distribution on the
child process's path (entry points, as pip installs them)."""

from __future__ import annotations

import json
import types

import pytest

from genloom.core import hookimpl, records, runio
from genloom.core.errors import ConfigError, GenloomError, PluginError
from genloom.core.plugins import registry_with

from reliability_kit import assert_clean_failure, cli, tiny, write_config

FAILED = {
    "rel-badreturn": "returned 42",
    "rel-orphanhook": "genloom_lstm_cells",
    "rel-orphankind": "'memory'",
}


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    """A run directory written from an untrained tiny model (no training needed to test loading)."""
    from genloom.core import config as config_mod
    from genloom.core.model import assemble
    from genloom.core.plugins import get_registry

    run_dir = tmp_path_factory.mktemp("untrained") / "run"
    validated = config_mod.validate(config_mod.compose(None, None, base=tiny()))
    built = assemble(validated, data=False)
    with runio.prepare_run_dir(run_dir):
        runio.save_weights(run_dir, built.model)
        runio.save_config(run_dir, validated, get_registry())
    return run_dir


def test_every_command_survives_misbehaving_plugins(bad_plugins, tmp_path):
    result = cli("plugins", env=bad_plugins)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    for plugin, what in FAILED.items():
        line = next((l for l in result.stderr.splitlines() if f"'{plugin}'" in l), "")
        assert "genloom-reltest" in line and what in line, result.stderr  # one line naming the plugin and what it did
    listing = cli("plugins", "--all", "--json", env=bad_plugins)
    assert listing.returncode == 0, listing.stderr
    errors = {p["name"]: p.get("error") for p in json.loads(listing.stdout)}
    assert all(errors[p] for p in FAILED) and not errors["baseline"]
    assert cli("components", "backbone", env=bad_plugins).returncode == 0
    config = write_config(tmp_path / "tiny.yaml", tiny(backbone={"name": "baseline:transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}))
    assert cli("config", config, env=bad_plugins).returncode == 0


def test_strict_mode_makes_a_misbehaving_plugin_fatal(bad_plugins):
    assert_clean_failure(cli("plugins", env={**bad_plugins, "GENLOOM_STRICT_PLUGINS": "1"}), "genloom-reltest")


def test_a_run_loads_the_components_it_was_built_with(bad_plugins, untrained_run, tmp_path):
    """rel-shadow also offers a backbone 'transformer': the run's plugins.json decides, a fresh config must choose."""
    result = cli("generate", untrained_run, "max_new_tokens=2", env=bad_plugins)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    config = write_config(tmp_path / "tiny.yaml", tiny())
    assert_clean_failure(cli("config", config, env=bad_plugins), "backbone.name", "rel-shadow:transformer", "baseline:transformer")


def test_a_component_whose_module_fails_to_import_is_one_clean_error(bad_plugins, untrained_run):
    assert_clean_failure(cli("generate", untrained_run, "decoder=broken-decoder", "max_new_tokens=2", env=bad_plugins),
                         "broken-decoder", "rel-brokendecoder", "genloom-reltest", "no_such_module")


def test_a_run_whose_plugin_is_gone_names_the_distribution(untrained_run, tmp_path):
    import shutil

    import genloom

    run = tmp_path / "run"
    shutil.copytree(untrained_run, run)
    manifest = json.loads((run / runio.PLUGINS).read_text())
    manifest["components"]["backbone"].update(plugin="lstm-zoo", distribution="genloom-lstm-zoo", version="1.2")
    (run / runio.PLUGINS).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="genloom-lstm-zoo") as info:
        genloom.load(run)
    assert info.value.path == "backbone.name"


# -- the same misbehaviours in-process (registry API) ----------------------------------------------

def _plugin(name, **hooks):
    module = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(module, hook, hookimpl(fn))
    return module


MISBEHAVING = {
    "returns-an-int": dict(genloom_backbones=lambda: 42),
    "returns-a-string-list": dict(genloom_decoders=lambda: ["sampling"]),
    "raises": dict(genloom_heads=lambda: 1 / 0),
    "undeclared-hook": dict(genloom_lstm_cells=lambda: []),
    "undeclared-kind": dict(genloom_components=lambda: [records.Component(kind="memory", name="m", factory="x:y")]),
    "duplicate-kind": dict(genloom_component_kinds=lambda: [records.ComponentKind(name="backbone")]),
}


@pytest.mark.parametrize("name", list(MISBEHAVING))
def test_a_misbehaving_plugin_is_marked_failed_and_the_rest_keep_working(name, monkeypatch):
    monkeypatch.delenv("GENLOOM_STRICT_PLUGINS", raising=False)
    reg = registry_with(_plugin(name, **MISBEHAVING[name]))
    assert reg.plugins[name].error, name
    assert reg.get("backbone", "transformer").plugin == "baseline"
    assert not [c for c in reg.components() if c.plugin == name]
    monkeypatch.setenv("GENLOOM_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=name):
        registry_with(_plugin(name, **MISBEHAVING[name]))


def test_building_a_component_whose_module_fails_names_its_plugin(untrained_run):
    from genloom.core.runio import load_generator

    broken = _plugin("broken-decoder-plugin", genloom_decoders=lambda: [records.decoder("broken", "no.such.module:build")])
    reg = registry_with(broken)
    with pytest.raises(GenloomError, match="broken-decoder-plugin"):
        load_generator(untrained_run, overrides=["decoder=broken"], registry=reg)
    gen = load_generator(untrained_run, registry=reg)
    with pytest.raises(GenloomError, match="broken-decoder-plugin"):
        gen.generate([[100]], max_new_tokens=2, decoder="broken")
