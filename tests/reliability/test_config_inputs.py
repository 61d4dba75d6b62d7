"""Bad configs and overrides, as a careless user or an attacker writes them: each is refused by
`genloom config` (exit 2, no traceback, the offending path or file named) before anything runs."""

from __future__ import annotations

import json
import time

import pytest

from genloom.core import config as config_mod
from genloom.core.errors import ConfigError

from reliability_kit import assert_clean_failure, cli, tiny, write_config


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("cfg") / "tiny.yaml", tiny())


# (override, what the message must name)
OUT_OF_RANGE = [
    ("backbone.n_heads=0", "backbone.n_heads"),
    ("backbone.n_layers=0", "backbone.n_layers"),
    ("backbone.dropout=2", "backbone.dropout"),
    ("data.seq_len=0", "data.seq_len"),
    ("data.batch_size=0", "data.batch_size"),
    ("optimizer.lr=-1", "optimizer.lr"),
    ("decoder={name: beam, num_beams: 0}", "decoder.num_beams"),
    ("processors=[{name: top-k, k: 0}]", "processors[0].k"),
    ("backbone.d_model=30", "backbone.d_model"),  # not divisible by n_heads=2... 30 is; see below
    ("optimizer.betas=[0.9, 1.5]", "optimizer.betas"),
    ("seed=-1", "seed"),
    ("trainer.max_steps=0", "trainer.max_steps"),
]
OUT_OF_RANGE[8] = ("backbone.d_model=15", "backbone.d_model")

CARELESS = [
    ("backbone.n_layers=1e3", "backbone.n_layers"),            # a float where an int goes
    ("backbone.n_layers=true", "backbone.n_layers"),           # YAML reads it as a bool
    ("backbone.n_layers=99999999999999999999999", "backbone.n_layers"),  # beyond any int64
    ("seed=99999999999999999999999", "seed"),
    ("optimizer.lr=.nan", "optimizer.lr"),
    ("optimizer.lr=.inf", "optimizer.lr"),
    ("optimizer.lr=1e999", "optimizer.lr"),
    ("optimizer.lr=1" + "0" * 400, "optimizer.lr"),          # an int beyond any float
    ("generate.prompt=null", "generate.prompt"),
    ("trainer=[1, 2]", "trainer"),
    ("kernels=5", "kernels"),
    ("data=5", "data"),
    ("backbone.n_layers=${oc.env:HOME}", "backbone.n_layers"),
    ("backbone.n_layers=${nosuch}", "interpolation"),
    ("backbone..name=x", "backbone."),
    ("noequals", "noequals"),
]


@pytest.mark.parametrize("override,where", OUT_OF_RANGE + CARELESS, ids=[o for o, _ in OUT_OF_RANGE + CARELESS])
def test_bad_override_is_a_clean_error_naming_the_field(good, override, where):
    assert_clean_failure(cli("config", good, override), where)


def _files(tmp_path):
    """Bad config files: name -> (content, what the message must name)."""
    return {
        "list.yaml": ("- a\n- b\n", "must be a mapping"),
        "scalar.yaml": ("42\n", "must be a mapping"),
        "binary.yaml": (b"\xff\xfe\x00\x01garbage", "not UTF-8"),
        "malformed.yaml": ("a: [unclosed\n", "malformed.yaml:2"),
        "python-tag.yaml": ("backbone: !!python/object/apply:os.system ['touch PWNED']\n", "python/object"),
        "int-key.yaml": ("backbone: {name: transformer, 3: x}\n", "backbone"),
        "defaults-int.yaml": ("defaults: 5\n", "defaults"),
        "defaults-missing.yaml": ("defaults: [no-such-file]\n", "no-such-file.yaml"),
        "defaults-self.yaml": ("defaults: [defaults-self]\n", "defaults cycle"),
        "deep.yaml": ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        "cycle.yaml": ("seed: ${project}\nproject: ${seed}\n", "interpolation cycle"),
        "bomb.yaml": ("".join(["a0: xxxxxxxxxxxxxxxx\n"] + [f"a{i}: \"${{a{i-1}}}${{a{i-1}}}${{a{i-1}}}${{a{i-1}}}\"\n" for i in range(1, 24)]),
                      "more than"),
        "list-bomb.yaml": ("".join(["b0: [1, 2, 3, 4, 5, 6, 7, 8]\n"] + [f"b{i}: [\"${{b{i-1}}}\", \"${{b{i-1}}}\", \"${{b{i-1}}}\", \"${{b{i-1}}}\"]\n"
                                                                       for i in range(1, 24)]), "more than"),
        "unknown-key.yaml": ("backbon: {name: transformer}\n", "backbon"),
        "ü n i c ø d e.yaml": ("backbone: {name: transformer, n_heads: 0}\n", "backbone.n_heads"),
    }


def test_bad_config_files_are_clean_errors_naming_the_file_or_field(tmp_path):
    for name, (content, needle) in _files(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        t0 = time.perf_counter()
        result = cli("config", path, cwd=tmp_path)
        assert_clean_failure(result, needle)
        assert time.perf_counter() - t0 < 120, name  # a bomb is refused, not expanded
    assert not (tmp_path / "PWNED").exists()  # no YAML tag ever runs code
    assert_clean_failure(cli("config", tmp_path / "missing.yaml"), "missing.yaml")
    assert_clean_failure(cli("config", tmp_path), str(tmp_path))  # a directory


def test_name_override_starts_a_fresh_node():
    """``decoder.name=beam`` over a sampling decoder with its own fields does not carry them over."""
    base = tiny(decoder={"name": "sampling"})
    for override in ("decoder.name=beam", "decoder=beam"):
        validated = config_mod.validate(config_mod.compose(None, [override, "decoder.num_beams=3"] if "." in override else [override], base=base))
        assert validated.components["decoder"].record.name == "beam"
    beam = config_mod.validate(config_mod.compose(None, ["decoder.num_beams=3", "decoder.name=beam"], base=base))
    assert beam.components["decoder"].config.num_beams == 3  # the name first, whatever the order on the line


def test_values_from_the_environment_never_reach_what_is_saved(good, monkeypatch):
    monkeypatch.setenv("GENLOOM_REL_SECRET", "s3cr3t-value")
    validated = config_mod.load(good, ["project=${oc.env:GENLOOM_REL_SECRET}"])
    assert validated.run.project == "s3cr3t-value"  # used ...
    assert validated.to_saved()["project"] == "${oc.env:GENLOOM_REL_SECRET}"  # ... but saved as the interpolation
    result = cli("config", good, "project=${oc.env:GENLOOM_REL_SECRET}", "--json", env={"GENLOOM_REL_SECRET": "s3cr3t-value"})
    assert result.returncode == 0, result.stderr
    assert "s3cr3t-value" not in result.stdout and json.loads(result.stdout)["project"] == "${oc.env:GENLOOM_REL_SECRET}"


def test_api_errors_carry_the_config_path():
    with pytest.raises(ConfigError) as info:
        config_mod.validate(config_mod.compose(None, ["backbone.n_heads=0"], base=tiny()))
    assert info.value.path == "backbone.n_heads" and ">= 1" in str(info.value)
    with pytest.raises(ConfigError) as info:
        config_mod.validate(config_mod.compose(None, ["backbone.d_model=15"], base=tiny()))
    assert info.value.path == "backbone.d_model"  # a __post_init__ message is placed at the field it names


def test_a_value_error_in_bind_is_a_config_error_at_the_node(monkeypatch):
    """``bind`` checks a node against what earlier nodes published; its ValueError names the node."""
    from genloom.core.model import assemble
    from genloom.plugins.baseline import TransformerConfig

    def bind(self, ctx):
        raise ValueError(f"d_model {self.d_model} does not fit the tokenizer")

    monkeypatch.setattr(TransformerConfig, "bind", bind)
    validated = config_mod.validate(config_mod.compose(None, [], base=tiny()))
    with pytest.raises(ConfigError) as info:
        assemble(validated, data=False)
    assert info.value.path == "backbone" and "does not fit the tokenizer" in str(info.value)


#: Where every numeric config field must declare its range: the core's sections, the toolkit's
#: shared configs and every built-in plugin.
RANGED_MODULES = ("genloom.core.", "genloom.toolkit.", "genloom.plugins.")


def _unconstrained_number(tp) -> bool:
    import types
    import typing

    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return False
    if tp in (int, float):
        return True
    if origin in (typing.Union, types.UnionType, list, tuple):
        return any(_unconstrained_number(a) for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis)
    return False


def _fields_without_range(classes) -> dict[str, list[str]]:
    """``{module.Class: [numeric fields without a declared range]}`` for the built-in classes among ``classes``
    (inherited fields count: a subclass's config is checked with its base's fields)."""
    import dataclasses
    import typing

    missing = {}
    for cls in classes:
        if not dataclasses.is_dataclass(cls) or not cls.__module__.startswith(RANGED_MODULES):
            continue
        hints = typing.get_type_hints(cls, include_extras=True)
        bad = [f.name for f in dataclasses.fields(cls) if _unconstrained_number(hints.get(f.name))]
        if bad:
            missing[f"{cls.__module__}.{cls.__name__}"] = bad
    return missing


def _built_in_configs() -> set:
    from genloom.core.plugins import get_registry

    configs = {rec.config for rec in get_registry().components() if rec.distribution == "genloom"}
    return configs | {config_mod.TrainerConfig, config_mod.OptimizerConfig, config_mod.GenerateConfig, config_mod.RunConfig}


def test_every_numeric_field_of_every_built_in_component_declares_its_range():
    """Sizes >= 1, probabilities in [0, 1]...: the range is declared once in the annotation (or
    AnyInt/AnyFloat where every value is meaningful), so the core checks it before anything runs.
    Covers the core, the toolkit and every plugin package under genloom/plugins."""
    import pathlib

    import genloom.plugins
    from genloom.core.plugins import get_registry

    # every built-in plugin package registers components, so its configs are among those checked
    packages = {p.name for p in pathlib.Path(genloom.plugins.__file__).parent.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    registered = {rec.factory.split(":")[0].split(".")[2] for rec in get_registry().components()
                  if isinstance(rec.factory, str) and rec.factory.startswith("genloom.plugins.")}
    assert packages <= registered, f"plugin packages with no registered component: {sorted(packages - registered)}"
    missing = _fields_without_range(_built_in_configs())
    assert not missing, f"numeric config fields without a declared range (see docs/config.md#value-constraints): {missing}"


def test_the_range_scan_flags_a_numeric_field_that_lost_its_range():
    """The scan above can fail: a built-in config whose field is a bare int, float, Optional, list or
    tuple of them is reported, inherited fields included; annotated and non-numeric fields are not."""
    import dataclasses

    from genloom.core.constraints import AnyFloat, PositiveInt, Probability
    from genloom.plugins.aaren import AarenConfig

    # built with real annotation objects (this module's annotations are strings) in a built-in module
    where = "genloom.plugins.example"
    stripped = dataclasses.make_dataclass("Stripped", [("n_heads", int, 4)], bases=(AarenConfig,))
    mixed = dataclasses.make_dataclass("Mixed", [
        ("a", PositiveInt, 1), ("b", float | None, None), ("c", tuple[int, ...], (1,)),
        ("d", list[Probability], dataclasses.field(default_factory=list)), ("e", AnyFloat, 0.0), ("f", str, "x"), ("g", bool, True),
    ])
    child = dataclasses.make_dataclass("Child", [("h", PositiveInt, 1)], bases=(mixed,))
    for cls in (stripped, mixed, child):
        cls.__module__ = where
    assert _fields_without_range({AarenConfig}) == {}
    assert _fields_without_range({stripped}) == {f"{where}.Stripped": ["n_heads"]}
    assert _fields_without_range({mixed, child}) == {f"{where}.Mixed": ["b", "c"], f"{where}.Child": ["b", "c"]}
    mixed.__module__ = "thirdparty.plugin"  # third-party configs are asked to declare ranges, not forced
    assert _fields_without_range({mixed}) == {}
