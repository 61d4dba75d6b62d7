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


# -- the API a plugin author uses is documented -----------------------------------------------

#: The core modules whose public names plugin authors use (the CLI and training runtime are the user's side).
AUTHOR_MODULES = ("records", "context", "state", "cache_policy", "model", "pattern", "kernels", "data", "generation", "errors", "config", "plugins")


def public_names(path: Path) -> list[str]:
    """Names a module defines at top level (functions, classes, assignments), not starting with ``_``;
    plus the names ``from x import ...`` re-exports when the module is a package ``__init__``."""
    import ast

    tree = ast.parse(path.read_text())
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
        elif path.name == "__init__.py" and isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("genloom"):
            names += [a.asname or a.name for a in node.names]
        elif path.name == "__init__.py" and isinstance(node, ast.If):  # `if pytest is not None:` fixtures and hooks
            names += [n.name for n in node.body if isinstance(n, ast.FunctionDef)]
    return [n for n in names if not n.startswith("_") and n not in ("log", "__all__")]


def code_spans(*pages: Path) -> list[str]:
    """Inline code spans of the pages (fenced examples do not count as documentation)."""
    spans = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        spans += re.findall(r"`([^`\n]+)`", text)
    return spans


def undocumented(names, spans) -> list[str]:
    return [n for n in names if not any(re.search(rf"(?<![\w.]){re.escape(n)}\b|\.{re.escape(n)}\b", s) for s in spans)]


GUIDES = sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("module", AUTHOR_MODULES)
def test_every_public_core_name_has_a_docs_entry(module):
    missing = undocumented(public_names(ROOT / "genloom" / "core" / f"{module}.py"), code_spans(*GUIDES))
    assert not missing, f"genloom.core.{module} names without a docs entry (add them to docs/plugin-guide.md, section 7): {missing}"


def test_core_package_and_testing_kit_names_have_docs_entries():
    assert not undocumented(public_names(ROOT / "genloom" / "core" / "__init__.py") + ["hookimpl"], code_spans(*GUIDES))
    missing = undocumented(public_names(ROOT / "genloom" / "testing" / "__init__.py"), code_spans(ROOT / "docs" / "testing.md"))
    assert not missing, f"genloom.testing names without an entry in docs/testing.md: {missing}"


def test_the_docs_check_catches_a_new_undocumented_name(tmp_path):
    module = tmp_path / "fresh.py"
    module.write_text("import os\nLIMIT = 3\n_private = 1\nclass Helper:\n    pass\ndef assemble():\n    pass\n")
    assert public_names(module) == ["LIMIT", "Helper", "assemble"]
    assert undocumented(public_names(module), code_spans(*GUIDES)) == ["LIMIT", "Helper"]
