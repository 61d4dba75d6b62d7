"""Small CLI and error-message guarantees: did-you-mean for a misspelled kind in ``describe``, and a
single ``config error`` prefix when one ConfigError is re-raised inside another."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from genloom.core.errors import ConfigError


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "genloom", *args], capture_output=True, text=True, env=dict(os.environ), timeout=120)


def test_describe_suggests_the_closest_kind():
    r = run_cli("describe", "backbon", "transformer")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown component kind 'backbon'. Did you mean 'backbone'?" in r.stderr


@pytest.mark.parametrize(
    ("inner", "outer", "expect"),
    [
        (dict(path="backbone.d_model"), dict(), "config error at 'backbone.d_model': bad. More."),
        (dict(path="a", source="c.yaml:3:1"), dict(path="a"), "config error at 'a' in c.yaml:3:1: bad. More."),
        (dict(), dict(path="decoder"), "config error at 'decoder': bad. More."),
        (dict(path="backbone.n_layers"), dict(path="decoder.draft"), "config error at 'decoder.draft': at 'backbone.n_layers': bad. More."),
    ],
)
def test_a_wrapped_config_error_has_one_prefix(inner, outer, expect):
    err = ConfigError(f"{ConfigError('bad.', **inner)} More.", **outer)
    assert str(err) == expect and err.message.endswith("bad. More.")
