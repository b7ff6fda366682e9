"""The daemon as a process, without a machine boot: netns hosts, a private bus, real shoutd (tests/hostlab.py)."""

import os

import pytest

from ..hostlab import World, attach_logs

if os.geteuid() != 0:
    pytest.skip("daemon tests need root (network namespaces)", allow_module_level=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    world = getattr(item, "funcargs", {}).get("world")
    if report.when == "call" and report.failed and world is not None:
        attach_logs(report, world.hosts)


@pytest.fixture
def world(tmp_path):
    """Builds hosts and buses on demand and tears everything down.

    When the test fails, each host's shoutd log is attached to the report
    (see the hook above): a rare race leaves nothing else to go on.
    """
    w = World(str(tmp_path))
    try:
        yield w
    finally:
        w.close()


def status(bus):
    return bus.status()
