"""Documentation is part of the feature: every hook is documented with its exact signature, and
every plugin has a catalogue page, a runnable config and tests."""

import inspect
import re
import tomllib
from pathlib import Path

import pytest

from genloom.core import hookspecs

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["genloom"]
PLUGINS = {name: module.rsplit(".", 1)[-1] for name, module in ENTRY_POINTS.items() if module.startswith("genloom.plugins.") and name != "baseline"}


def test_every_hookspec_is_documented_with_its_exact_signature():
    text = (ROOT / "docs" / "hooks.md").read_text()
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("genloom_"):
            assert f"`{name}{inspect.signature(fn)}`" in text, f"docs/hooks.md lacks {name}{inspect.signature(fn)}"


@pytest.mark.parametrize("name,package", sorted(PLUGINS.items()))
def test_every_plugin_has_catalogue_page_config_and_tests(name, package):
    page = ROOT / "docs" / "catalogue" / f"{name}.md"
    assert page.exists(), f"missing {page}"
    assert re.search(r"arXiv|arxiv", page.read_text()), f"{page} names no paper"
    configs = [p for p in (ROOT / "configs").glob("*.yaml") if p.stem == name or p.stem.startswith(name + "-")]
    assert configs, f"no configs/{name}.yaml"
    assert (ROOT / "tests" / "plugins" / package).is_dir(), f"no tests/plugins/{package}/"


def test_catalogue_index_lists_every_plugin():
    text = (ROOT / "docs" / "catalogue" / "README.md").read_text()
    for name in PLUGINS:
        assert f"({name}.md)" in text, f"docs/catalogue/README.md does not link {name}.md"
