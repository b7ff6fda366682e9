"""A replica host's control plane, with the face the daemon knows from RaftNode.

A replica (roles.py) is outside Raft: no journal, no Raft port, no vote.  It
follows the state through one voter's feed (replica.py) and writes through
it.  The daemon, the reconciler, the Docker adapters and D-Bus read `state`,
`status` and `caught_up` and call `submit` exactly as on a voter, so they
behave the same on every host.

Its status: role "replica"; its leader is the one its voter reports; it has
a quorum while its voter is reachable and has a leader (a replica's write can
commit then); `nodes` are the voters, the one it follows "connected".
`caught_up` is set once its own registration came back down the feed: only
then is its copy current, never while it is still the empty state of a
replica that just started.
"""

import asyncio
import logging

from ..errors import UNAVAILABLE, ShoutdError
from .feed import feed_address
from .node import Problem, RaftNode, RaftStatus
from .replica import Follower

log = logging.getLogger(__name__)


class ReplicaNode:
    def __init__(self, self_addr, voters, secret):
        self.self_addr = self_addr
        self.secret = secret
        self._configured = sorted(voters)     # the voters it was told of (members.json), until the state names them
        self.follower = Follower(self_addr, secret, self._feeds, on_change=self._moved, fallback=self._others,
                                 on_op=self._applied)
        self.status = RaftStatus(self=self_addr, role="replica", nodes={self_addr: "self"})
        self.loop = None
        self.caught_up = None
        self.halted = None
        self._on_change = lambda: None

    def voters(self):
        return self.follower.state.data["voters"] or self._configured

    def _feeds(self):
        return [feed_address(v) for v in self.voters()]

    def _others(self):
        """Every other member's feed address: after a whole voter-set change missed, the new voters are there."""
        voters = set(self.voters())
        return [feed_address(m) for m in sorted(self.follower.state.members) if m not in voters and m != self.self_addr]

    def attach(self, loop, on_change=None):
        self.loop = loop
        self.caught_up = asyncio.Event()
        self._on_change = on_change or self._on_change
        self.follower.start()
        loop.call_soon(self._moved)

    def _moved(self):
        following = self.follower.voter_node
        leader = self.follower.leader if following else None
        nodes = {v: "connected" if v == following else "disconnected" for v in self.voters()}
        nodes[self.self_addr] = "self"
        self.halted = self.follower.state.halted
        self.status = RaftStatus(self=self.self_addr, leader=leader, role="halted" if self.halted else "replica",
                                 has_quorum=leader is not None, replayed=following is not None, nodes=nodes,
                                 unreachable=() if following else tuple(self.voters()),
                                 leader_changed=self.status.leader_changed)
        if self.halted and self.caught_up is not None:
            self.caught_up.clear()
        self._on_change()

    def _applied(self):
        """An op arrived: the state moved; the status only if the op halted this release or changed the voters."""
        if self.follower.state.halted != self.halted or set(self.status.nodes) != {*self.voters(), self.self_addr}:
            self._moved()
        else:
            self._on_change()

    @property
    def state(self):
        return self.follower.state

    def health(self):
        task = self.follower.task
        if task is not None and task.done() and not task.cancelled():
            return Problem("the replica's feed stopped: %r" % (task.exception(),), fatal=True)
        return None

    def members(self):
        return sorted(self.status.nodes)

    def slowest_flush(self):
        return 0.0                             # a replica writes no journal

    def no_quorum_message(self, describe=None):
        describe = describe or (lambda member: member)
        return ("this host is a replica and reaches no voter with a leader (voters: %s); bring a voter back or "
                "reconnect this host to them (TCP ports %s)"
                % (", ".join(describe(v) for v in self.voters()) or "none known",
                   ", ".join(sorted({v.rsplit(":", 1)[1] for v in self.voters()} |
                                    {f.rsplit(":", 1)[1] for f in self._feeds()}))))

    async def submit(self, op, timeout=None, describe=None):
        if self.halted:
            raise ShoutdError(self.halted, UNAVAILABLE, "UpgradeNeeded")
        return await (self.follower.submit(op) if timeout is None else self.follower.submit(op, timeout))

    register = RaftNode.register         # the same steps, through this host's submit

    async def relay_membership(self, kind, addr, timeout=22.0):
        """AddPeer or RemovePeer, run on the voter this replica follows (within D-Bus's 25 s)."""
        return await self.follower.membership(kind, addr, timeout)

    def destroy(self, wait=5.0):
        if self.follower.task is not None:
            self.follower.task.cancel()

