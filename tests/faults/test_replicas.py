"""Replicas under the nemeses (issue 16): three voters and two replicas, the workload on all five.

The replicas write through their voters (shoutd/raft/feed.py); the checker
(history.py) decides, from the history and every host's final state, that
nothing acknowledged was lost or handed out twice, on a replica as on a
voter, and that all five hosts hold the same state.
"""

import time

import pytest

from ..support import wait_for
from .cluster import Cluster
from .test_nemeses import run

pytestmark = pytest.mark.faults


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path), replicas=2)
    try:
        yield c
    finally:
        c.close()


def test_kill_9_of_the_leader_with_replicas_writing(cluster):
    def nemesis(c, rng):
        for _ in range(4):
            leader = c.leader()
            leader.kill()
            time.sleep(rng.uniform(0.5, 3.0))  # the schedule: down this long
            c.start(leader, wait=False)
            time.sleep(rng.uniform(1.0, 3.0))  # the schedule: then this long in peace
    run(cluster, nemesis)


def test_kill_9_of_every_host_replicas_included_at_once(cluster):
    def nemesis(c, rng):
        for _ in range(5):
            time.sleep(rng.uniform(1.0, 2.5))  # the schedule: work between the crashes
            c.kill(*c.hosts)
            c.start(*c.hosts)
    run(cluster, nemesis)


def test_a_partition_that_isolates_a_replica_then_one_that_isolates_a_voter(cluster):
    def nemesis(c, rng):
        for target in (rng.choice(c.replicas), rng.choice(c.voters)):
            c.partition(target)
            # Longer than a channel may be silent (feed.DEAD_AFTER): the replica loses its voter.
            wait_for(lambda: not target.bus.status()["Quorum"], timeout=15,
                     what="the cut-off host to report no quorum")
            time.sleep(rng.uniform(1.0, 4.0))  # the schedule: cut off this long after it noticed
            c.heal()
            time.sleep(rng.uniform(2.0, 3.0))  # the schedule: healed for this long
    run(cluster, nemesis)
