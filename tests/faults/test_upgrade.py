"""A rolling upgrade under load: from the previous release to this one, host by host, with the history checked.

Three daemons start on the previous release (hostlab.PREVIOUS, from git),
the recording workload allocates and releases through every host, and each
host in turn is stopped as `apt upgrade` stops it and started again on this
tree.  While the releases are mixed the cluster runs state version 2; once
the last host runs this release the leader raises it to 3, and every host
then reports its release.  The checker decides from the history: nothing
acknowledged lost, nothing held twice, every host the same at the end.
"""

import random
import time

import pytest

from shoutd import __version__
from shoutd.state.ops import STATE_VERSION

from ..hostlab import previous_tree
from ..support import wait_for
from .cluster import Cluster, seed
from .history import Workload, check

pytestmark = pytest.mark.faults


def status(host):
    return host.bus.status()


def test_a_rolling_upgrade_loses_nothing_and_raises_the_state_version_at_the_end(tmp_path):
    cluster = Cluster(str(tmp_path), previous=previous_tree(str(tmp_path)))
    try:
        value = seed()
        rng = random.Random(value)
        assert all("StateVersion" not in status(h) for h in cluster.hosts), "all on the previous release"
        with Workload(cluster.hosts, cluster.pool, value) as workload:
            time.sleep(1.0)  # the workload gets going first
            for n, host in enumerate(rng.sample(cluster.hosts, len(cluster.hosts))):
                host.stop()                      # as the package's upgrade stops the service
                host.tree = None
                cluster.start(host)
                if n < len(cluster.hosts) - 1:
                    wait_for(lambda h=host: status(h)["StateVersion"] == 2, timeout=30,
                             what="the mixed cluster to stay at state version 2")
                time.sleep(rng.uniform(2.0, 4.0))  # the schedule: mixed for this long, with the workload on
            wait_for(lambda: all(status(h)["StateVersion"] == STATE_VERSION for h in cluster.hosts), timeout=30,
                     what="the state version raised once every host runs this release")
            wait_for(lambda: all(set(status(h)["Releases"].values()) == {__version__} for h in cluster.hosts),
                     timeout=30, what="every host's release reported (a feature of state version 3)")
            time.sleep(1.0)  # traffic after the upgrade too
        finals = cluster.converged()
        counts = workload.counts()
        print("operations across the upgrade: %s" % counts)
        problems = check(workload.history, finals)
        assert counts.get("alloc ok", 0) >= 20, counts
        assert not problems, "\n".join(["seed %d" % value] + problems[:20])
        assert all(not status(h)["Halted"] for h in cluster.hosts)
    finally:
        cluster.close()
