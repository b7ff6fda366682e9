"""What every end-to-end test gets: its containers removed when it ends, passed or failed; and
the Docker releases that the tests of the data plane run on (each module once per engine)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from engines import ENGINES  # noqa: E402


@pytest.fixture(scope="module", params=sorted(ENGINES), ids=lambda name: "docker-" + name)
def engine(request):
    """Debian 12's Docker 20.10 and Debian unstable's 28.5.2 (with the containerd image store)."""
    return ENGINES[request.param]


@pytest.fixture(autouse=True)
def no_containers_left(request):
    """So that a failed test's containers never leak into the next test on the same lab."""
    yield
    lab = request.node.funcargs.get("lab")
    if lab is not None:
        lab.remove_containers(keep_tasks=True)
