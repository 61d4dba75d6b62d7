"""Extending genloom with a new component kind and hooks of its own, across two plugins.

``extension/genloom_reward_kind.py`` declares the kind ``reward`` (top-level key ``reward:``) with its
own hookspec ``genloom_rewards`` and a ``best-of-n`` decoder that uses the configured reward;
``extension/genloom_reward_provider.py`` implements that hookspec with a ``token-count`` reward. The
reward node is validated, bound, built and published as ``ctx.reward`` in ``train`` and in generation.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest

from genloom.core import config as config_mod
from genloom.core.errors import ConfigError, PluginError
from genloom.core.plugins import registry_with

HERE = Path(__file__).resolve().parent / "extension"

MODEL = {
    "seed": 0,
    "logger": "none",
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
    "objective": {"name": "next-token"},
    "reward": {"name": "token-count", "token": 97},
    "decoder": {"name": "best-of-n", "n": 6},
    "generate": {"prompt": "a", "max_new_tokens": 8},
}


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    kind = importlib.import_module("genloom_reward_kind")
    provider = importlib.import_module("genloom_reward_provider")
    provider.CHOSEN.clear()
    provider.BOUND.clear()
    return kind, provider


@pytest.fixture
def registry(plugins):
    return registry_with(*plugins)


def test_the_declared_kind_and_its_hook_work_like_core_kinds(registry):
    assert registry.kinds["reward"].plugin == "genloom_reward_kind"
    (rec,) = registry.components("reward")
    assert (rec.name, rec.plugin) == ("token-count", "genloom_reward_provider")  # stamped with the plugin that implements the hook
    with pytest.raises(ConfigError, match="Did you mean 'token-count'"):
        config_mod.validate(config_mod.compose(base={**MODEL, "reward": {"name": "token-cuont"}}), registry)


def test_nested_component_nodes_are_validated_at_config_time(registry):
    bad = copy.deepcopy(MODEL)
    bad["decoder"]["reward"] = {"name": "token-count", "tokn": 3}
    with pytest.raises(ConfigError, match=r"at 'decoder\.reward\.tokn'.*Did you mean 'token'"):
        config_mod.validate(config_mod.compose(base=bad), registry)
    bad["decoder"]["reward"] = "token-cont"
    with pytest.raises(ConfigError, match=r"at 'decoder\.reward\.name'"):
        config_mod.validate(config_mod.compose(base=bad), registry)


def test_a_kind_naming_a_hook_nobody_added_is_a_plugin_error(monkeypatch):
    from genloom.core import hookimpl, records

    class Plugin:
        @hookimpl
        def genloom_component_kinds(self):
            return [records.ComponentKind("critic", config_key="critic", hook="genloom_critics")]

    monkeypatch.delenv("GENLOOM_STRICT_PLUGINS", raising=False)
    reg = registry_with(Plugin(), entry_points=False)  # isolated: that plugin fails, the rest keep working
    assert "genloom_critics" in reg.plugins["plugin0"].error and "critic" not in reg.kinds
    monkeypatch.setenv("GENLOOM_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="genloom_critics"):
        registry_with(Plugin(), entry_points=False)


def test_the_top_level_node_is_bound_built_and_published_for_generation(plugins, registry):
    from genloom.testing import tiny_model

    _, provider = plugins
    built = tiny_model(base=MODEL, registry=registry)
    assert provider.BOUND == [257]  # bind(ctx) ran, after the tokenizer published vocab_size
    assert built.ctx.reward is built.declared["reward"] and built.decoder.reward is built.ctx.reward
    from genloom.core.generation import Generator

    result = Generator(built).generate([[97, 98]] * 2, max_new_tokens=8, seed=3)
    scores, candidates = result.metrics.extra["scores"], result.metrics.extra["candidates"]
    for b, seq in enumerate(result.ids):
        assert seq in candidates[b] and seq.count(97) == max(scores[b]) == max(c.count(97) for c in candidates[b])
    assert len(provider.CHOSEN) == 1  # the decoder called the other plugin's hook through ctx.hook

    # the broken variant: without the top-level reward node the decoder has nothing to use
    no_reward = {k: v for k, v in MODEL.items() if k != "reward"}
    with pytest.raises(ConfigError, match="needs 'reward'"):
        tiny_model(base=no_reward, registry=registry)
    # a bind-time check of the declared node fails like any other config error
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        tiny_model(base={**MODEL, "reward": {"name": "token-count", "token": 999}}, registry=registry)


def test_the_top_level_node_works_in_train_and_in_a_loaded_run(plugins, registry, tmp_path):
    import genloom
    from genloom.core.training import train

    _, provider = plugins
    cfg = {**copy.deepcopy(MODEL), "data": {"name": "pystdlib", "seq_len": 16, "batch_size": 4, "max_train_bytes": 4_000, "max_eval_bytes": 1_000},
           "trainer": {"max_steps": 2, "val_every_steps": 2, "checkpoint_every_steps": 2, "progress": False, "threads": 1}}
    result = train(cfg, run_dir=tmp_path / "run", registry=registry)
    assert result.global_step == 2 and result.sample is not None
    assert len(provider.CHOSEN) == 1  # the end-of-training sample went through best-of-n and the configured reward

    gen = genloom.load(tmp_path / "run", registry=registry)
    assert gen.ctx.reward.token == 97
    out = gen.generate([97], max_new_tokens=6, seed=1)
    assert max(out.metrics.extra["scores"][0]) == out.ids[0].count(97)
    assert len(provider.CHOSEN) == 2


def test_built_in_wrappers_validate_their_base_node_at_config_time():
    cfg = {"tokenizer": {"name": "bytes"}, "head": {"name": "mtp"}, "backbone": {"name": "mtp-gated-lora", "base": {"name": "transformer", "d_modle": 16}}}
    with pytest.raises(ConfigError, match=r"at 'backbone\.base\.d_modle'.*Did you mean 'd_model'"):
        config_mod.validate(config_mod.compose(base=cfg))


def test_a_many_kind_publishes_the_list_of_its_built_nodes(plugins):
    from genloom.core import hookimpl, records
    from genloom.testing import tiny_model

    _, provider = plugins

    class Critics:
        @hookimpl
        def genloom_component_kinds(self):
            return [records.ComponentKind("critic", "Judges samples", config_key="critics", many=True)]

        @hookimpl
        def genloom_components(self):
            return [records.Component(kind="critic", name="count", factory="genloom_reward_provider:TokenCount", config=provider.TokenCountConfig)]

    reg = registry_with(Critics())
    base = {k: v for k, v in MODEL.items() if k not in ("reward", "decoder")}
    built = tiny_model(base={**base, "critics": [{"name": "count", "token": 1}, "count"]}, registry=reg)
    assert [c.token for c in built.ctx.critics] == [1, 97] and built.declared["critics"] is built.ctx.critics
    assert provider.BOUND == [257, 257]


def test_a_declared_config_key_may_not_reuse_a_built_in_key(monkeypatch):
    from genloom.core import hookimpl, records

    class Plugin:
        @hookimpl
        def genloom_component_kinds(self):
            return [records.ComponentKind("judge", config_key="decoder")]

    monkeypatch.delenv("GENLOOM_STRICT_PLUGINS", raising=False)
    reg = registry_with(Plugin(), entry_points=False)  # isolated: that plugin fails, the rest keep working
    assert "top-level config key 'decoder', already used by 'genloom'" in reg.plugins["plugin0"].error and "judge" not in reg.kinds
    monkeypatch.setenv("GENLOOM_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="top-level config key 'decoder', already used by 'genloom'"):
        registry_with(Plugin(), entry_points=False)
