"""The layering rule: the core imports neither the toolkit nor a plugin; the toolkit imports no plugin."""

import ast
import pathlib

import pytest

import genloom

ROOT = pathlib.Path(genloom.__file__).parent


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _violations(package: str, forbidden: tuple[str, ...]):
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in _imports(path):
            if name.startswith(forbidden):
                found.append(f"{path.relative_to(ROOT.parent)}:{line} imports {name}")
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("core", ("genloom.toolkit", "genloom.plugins")), ("toolkit", ("genloom.plugins",)), ("kernels", ("genloom.toolkit", "genloom.plugins")),
     ("reporting", ("genloom.toolkit", "genloom.plugins"))],
)
def test_layering(package, forbidden):
    assert _violations(package, forbidden) == []


def test_the_check_catches_a_violation(tmp_path, monkeypatch):
    bad = tmp_path / "core"
    bad.mkdir()
    (bad / "leak.py").write_text("import importlib\nfrom genloom.toolkit.canvas import predict\nimportlib.import_module('genloom.plugins.radd')\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert len(_violations("core", ("genloom.toolkit", "genloom.plugins"))) == 2
