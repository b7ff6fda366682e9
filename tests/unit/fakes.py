"""Fakes for the unit tier, bound to the real interfaces they stand in for.

FakeRaft applies ops to a real ClusterState in-process, with the same copy
semantics as raft.RaftNode (callers never share the state's dicts), so the
service and plugin are tested against the real state machine.
"""

import copy

from shoutd.errors import ShoutdError
from shoutd.state import ClusterState


class FakeRaft:
    def __init__(self):
        self.cluster = ClusterState()
        self.ops = []

    def state(self):
        return ClusterState(copy.deepcopy(self.cluster.data))

    def quorum_hint(self):
        return "no leader is elected"

    async def submit(self, op, timeout=10.0):
        self.ops.append(copy.deepcopy(op))
        result = copy.deepcopy(self.cluster.apply(copy.deepcopy(op)))
        if "error" in result:
            raise ShoutdError(result["error"], result["kind"])
        return result["value"]


class FakeReconciler:
    def __init__(self):
        self.passes = 0

    async def sync(self, timeout=30.0):
        self.passes += 1

    def kick(self):
        self.passes += 1


class Config:
    default_pool = "10.213.0.0/16"
    default_pool_prefix = 24
