"""Fault injection: real daemons, real kernels, nemeses from a seed (see cluster.py)."""

import os
import shutil
import signal
import time

import pytest

from ..hostlab import attach_logs
from .cluster import Cluster

if os.geteuid() != 0 or not shutil.which("iptables"):
    pytest.skip("fault tests need root and iptables (network namespaces, partitions)", allow_module_level=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.when == "call" and report.failed and cluster is not None:
        keep = os.environ.get("SHOUTD_LAB_LOGS", "/tmp/shoutd-lab-logs")
        for h in cluster.hosts:
            h.signal(signal.SIGUSR1)            # each thread's stack into the log
        time.sleep(0.5)  # faulthandler writes the stacks asynchronously
        attach_logs(report, cluster.hosts, keep)
        for h in cluster.hosts:
            with open(os.path.join(keep, "%s-%s.raft" % (item.name, h.name)), "w") as f:
                f.write(cluster.raft_status(h))


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path))
    try:
        yield c
    finally:
        c.close()
