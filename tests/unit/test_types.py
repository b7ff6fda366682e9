"""The state machine's records are TypedDicts, and the type checker holds the code to them (issue 13)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_mypy_finds_nothing_in_shoutd():
    probe = subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("mypy is not installed here (.ci/setup installs python3-mypy)")
    res = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_op_has_a_constructor_and_a_home():
    from shoutd.state import ops
    for name, spec in ops.OPS.items():
        assert callable(getattr(ops, name, None)), "no constructor for %s" % name
        assert spec.since <= ops.STATE_VERSION and spec.touches <= ops.EVERYTHING
        assert spec.apply.__module__.startswith("shoutd.state."), name
