"""Fixtures of the reliability suite (helpers live in reliability_kit.py)."""

from __future__ import annotations

import os
import textwrap

import pytest

from reliability_kit import PLUGINS


@pytest.fixture(scope="session")
def bad_plugins(tmp_path_factory) -> dict:
    """Environment variables that put the ``genloom-reltest`` distribution (one entry point per
    misbehaviour above) on a child process's path, as ``pip install`` would."""
    site = tmp_path_factory.mktemp("site")
    package = site / "rel_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    lines = ["[genloom]"]
    for name, source in PLUGINS.items():
        module = name.replace("-", "_")
        (package / f"{module}.py").write_text(textwrap.dedent(source))
        lines.append(f"{name} = rel_plugins.{module}")
    info = site / "genloom_reltest-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: genloom-reltest\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path}
