"""What every API area shares: this host's view of the cluster, and how it proposes changes.

`state()` is the loop's live replica of the replicated state (raft/machine.py):
read it, never change it, and do not hold a record across an await when you
need its value as it was (copy the field first).
"""

import asyncio
import contextlib
import logging

from .. import checks
from ..errors import NOT_FOUND, UNAVAILABLE, ShoutdError
from ..state import ops

log = logging.getLogger(__name__)


class Cluster:
    def __init__(self, raft, node, config, kernel_prunes=True, firewall=None):
        self.raft = raft
        self.node = node
        self.config = config
        self.kernel_prunes = kernel_prunes   # this kernel can send a group to chosen hosts (VXLAN MDB)
        self.firewall = firewall             # its `problems`: what in this host's firewall blocks shoutd traffic
        self._replicas = {}          # subnet -> the cluster network whose copy the mirror is creating here

    def state(self):
        return self.raft.state

    async def until_caught_up(self, timeout=30.0):
        """Wait until this host's copy of the state is current (see RaftNode.caught_up).

        Docker's calls decide from the state (is this endpoint ours? is that
        address free?), so right after a restart they wait for it rather than
        act on a copy that may lack the last entries.
        """
        try:
            await asyncio.wait_for(self.raft.caught_up.wait(), timeout)
        except asyncio.TimeoutError:
            raise ShoutdError("this host has not caught up with the cluster within %gs: %s"
                              % (timeout, self.raft.no_quorum_message(self.describe_member)), UNAVAILABLE) from None

    def describe_member(self, member):
        """A member as people know it: 'hostname (VTEP address)'."""
        return self.state().member_label(member).replace("host ", "", 1)

    async def submit(self, op):
        """Propose one operation (made by a constructor of state.ops); its value, or a ShoutdError."""
        return await self.raft.submit(op, describe=self.describe_member)

    async def fresh_pool(self, pool_id):
        """pool(), but a pool another host made a moment ago is not taken for a missing one.

        A follower applies a commit only when the leader next tells it the
        commit index, so for a few milliseconds this host's copy can lack what
        another host has already been told exists.  Before answering "does not
        exist", one no-op through Raft brings this copy up to every op committed
        before it.
        """
        try:
            return self.pool(pool_id)
        except ShoutdError as e:
            if e.kind != NOT_FOUND:
                raise
        await self.submit(ops.barrier(self.node))
        return self.pool(pool_id)

    def pool(self, pool_id):
        """The cluster network whose IPAM PoolID is `pool_id`."""
        checks.own_id(pool_id, "PoolID")
        net = self.state().networks.get(pool_id)
        if net is None:
            raise ShoutdError("shoutd network (pool) %s does not exist" % pool_id, NOT_FOUND)
        return net

    def bound_network(self, docker_id):
        """The cluster network that this host's Docker knows as `docker_id`."""
        checks.network_id(docker_id, "NetworkID")
        net = self.state().network_by_docker_id(self.node, docker_id)
        if net is None:
            raise ShoutdError("Docker network %s is not a shoutd network on this host; "
                              "it may have been removed on another host" % docker_id[:12], NOT_FOUND)
        return net

    @contextlib.contextmanager
    def making_replica(self, net_id, subnet):
        """While the mirror creates a cluster network in this host's Docker.

        Docker's IPAM calls carry no network name, so this is how RequestPool
        and CreateNetwork know the network is that cluster network's copy and
        not a new one, without a marker option in Docker's copy.
        """
        self._replicas[subnet] = net_id
        try:
            yield
        finally:
            self._replicas.pop(subnet, None)

    def replica_of(self, subnet):
        """The cluster network whose copy the mirror is making for `subnet`, if any."""
        return self._replicas.get(subnet)
