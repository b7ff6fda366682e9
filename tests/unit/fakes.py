"""Fakes for the unit tier, bound to the real interfaces they stand in for.

FakeRaft applies ops to a real ClusterState in-process and hands out that
live state, as raft.RaftNode hands out its loop replica, so the service and
plugin are tested against the real state machine and any accidental write
through a reader shows up (see test_plugin's replay check).
"""

import asyncio
import copy

from shoutd.errors import ShoutdError
from shoutd.raft import RaftStatus
from shoutd.state.ops import new_request_id
from shoutd.state import ClusterState

NODE = "198.18.0.1:7380"


class FakeRaft:
    secret = "fake-secret"

    def __init__(self, node=NODE):
        self.cluster = ClusterState()
        self.ops = []
        self.status = RaftStatus(self=node, leader=node, term=1, role="leader", has_quorum=True, replayed=True,
                                 nodes={node: "self"})
        self._caught_up = None

    @property
    def state(self):
        return self.cluster

    @property
    def caught_up(self):
        # An asyncio.Event binds to the loop it is first used on; tests run several loops.
        if self._caught_up is None:
            self._caught_up = asyncio.Event()
            self._caught_up.set()
        return self._caught_up

    def no_quorum_message(self, describe=None):
        return "the cluster has no quorum: no leader is elected yet"

    def slowest_flush(self):
        return 0.0

    halted = None

    async def submit(self, op, timeout=10.0, describe=None):
        op = dict(op)
        op.setdefault("req", new_request_id())
        self.ops.append(copy.deepcopy(op))
        result = self.cluster.apply(copy.deepcopy(op))
        if "error" in result:
            raise ShoutdError(result["error"], result["kind"])
        return result["value"]


class FakeFirewall:
    problems = ()


class FakeReconciler:
    def __init__(self):
        self.waits = 0        # reconcile() calls: Docker waiting for the kernel
        self.kicks = 0
        self.firewall = FakeFirewall()

    async def reconcile(self, timeout=30.0):
        self.waits += 1

    def kick(self):
        self.kicks += 1


class Config:
    default_pool = "10.213.0.0/16"
    default_pool_prefix = 24
    raft_port = 7380
    network_port = 7380
    legacy_port = 4789
