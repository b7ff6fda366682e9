"""What every end-to-end test gets: its containers removed when it ends, passed or failed."""

import pytest


@pytest.fixture(autouse=True)
def no_containers_left(request):
    """So that a failed test's containers never leak into the next test on the same lab."""
    yield
    lab = request.node.funcargs.get("lab")
    if lab is not None:
        lab.remove_containers()
