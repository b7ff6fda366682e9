"""Who votes: a few voters in Raft, every other member a replica (issue 16, docs/replicas.md).

Raft's cost grows with its voters (every commit waits for a majority of
them, every election asks them all) and PySyncObj connects every voter to
every other.  So only a few members vote; the rest are replicas, which
follow the state through one voter (raft/feed.py) and are never counted.

How many vote (`voter_target`): every member while there are fewer than 3;
then 3, which survive one lost voter; and 5, which survive two, once the
cluster has `five_from` members (config `voters_five_from`, 7 by default:
below that, two hosts down at once is a large part of the cluster anyway,
and each voter more makes every commit wait for one more disk).

What to change (`next_change`) is decided on the leader, one change at a
time because Raft changes membership one member at a time.  A voter lost for
good (removed, or silent for LOST_AFTER) goes first, which keeps a majority
reachable while the set is short; then the set is filled from the replicas
that are up, in a stable order so that every leader picks alike.

The state's record of who votes (`voters_set`) leads, and Raft follows
(`Voters`): replicas read the record to find the voters, a replica named in
it becomes one, and every host shows each member's role from it.
"""

import logging
import time
from typing import Iterable, List, Optional, Sequence, Tuple

from .errors import ShoutdError
from .kickloop import KickLoop
from .state import ops

log = logging.getLogger(__name__)

LOST_AFTER = 60.0          # seconds a voter may be silent before a replica takes its place
RECORD_SINCE = 6           # the state version that has voters_set


def voter_target(members: int, five_from: int = 7) -> int:
    """How many of `members` hosts vote."""
    if members < 3:
        return members
    return 5 if members >= five_from else 3


def next_change(voters: Sequence[str], members: Iterable[str], lost: Iterable[str], up: Iterable[str],
                target: int) -> Optional[Tuple[str, str]]:
    """("remove", voter) or ("add", replica) to move toward `target` healthy voters, or None.

    `voters` are Raft's members, `members` everyone registered, `lost` the
    voters gone for good, `up` the replicas that can be promoted now.
    """
    lost_voters = sorted(set(voters) & set(lost))
    healthy = [v for v in voters if v not in lost_voters]
    candidates: List[str] = sorted((set(up) & set(members)) - set(voters))
    if lost_voters and len(healthy) >= 2:
        return "remove", lost_voters[0]       # the healthy ones still make a majority of what is left
    if len(healthy) < target and candidates:
        return "add", candidates[0]
    if lost_voters:
        return "remove", lost_voters[0]
    return None                                # more healthy voters than the target stay: never demote one


class Voters(KickLoop):
    """On the leader: keep Raft's membership equal to the voters the state records, and the record right.

    The state's voters (voters_set) are the intent; Raft follows, one change
    at a time.  So every change of who votes starts as a state change that
    every host sees: a replica named a voter starts again as one (daemon.py),
    and this loop then adds it to Raft.  AddPeer and RemovePeer of a voter
    change the record the same way (service/membership.py).  Until the state
    records voters (a cluster that just reached state version 6), the loop
    records Raft's members as they are.
    """

    def __init__(self, node, view, submit, replicas_up, five_from=7, lost_after=LOST_AFTER, interval=5.0):
        super().__init__(interval, view.caught_up)
        self.node = node
        self.view = view                 # state, status, caught_up, change_membership (the RaftNode)
        self.submit = submit
        self.replicas_up = replicas_up   # () -> the replicas that follow this host now (feed sessions)
        self.five_from = five_from
        self.lost_after = lost_after
        self._silent_since = {}          # voter -> when this leader first saw it silent
        self._lost = set()               # voters this leader removed as lost: never promoted again by it

    async def step(self, periodic):
        state, status = self.view.state, self.view.status
        if status.role != "leader" or state.version < RECORD_SINCE:
            self._silent_since.clear()
            return
        raft, recorded = sorted(status.nodes), state.data["voters"]
        try:
            if not recorded:
                await self._record(raft, recorded, "recorded as Raft has them")
            elif set(raft) != set(recorded):
                await self._follow(raft, recorded)
            else:
                await self._plan(recorded, status)
        except ShoutdError as e:
            log.info("voters: %s; trying again", e)
            self.kick(delay=1.0)

    async def _record(self, voters, was, why):
        await self.submit(ops.voters_set(self.node, voters, was))     # refused if AddPeer changed them first
        log.info("voters now %s (%s)", ", ".join(sorted(voters)), why)

    async def _follow(self, raft, recorded):
        """One Raft membership change toward the recorded voters."""
        gone = sorted(set(raft) - set(recorded))
        kind, addr = ("rem", gone[0]) if gone else ("add", sorted(set(recorded) - set(raft))[0])
        log.info("Raft membership: %s %s, as the state records", "removing" if gone else "adding", addr)
        await self.view.change_membership(kind, addr)
        self.kick()

    async def _plan(self, voters, status):
        now = time.monotonic()
        silent = set(status.silent)
        for v in list(self._silent_since):
            if v not in silent:
                del self._silent_since[v]
        for v in silent:
            self._silent_since.setdefault(v, now)
        lost = [v for v, since in self._silent_since.items() if now - since >= self.lost_after]
        members = self.view.state.members
        # Replicas that follow this leader are surely up; if none does, any replica not lost before
        # (one that turns out dead is removed as lost in its turn).
        replicas = set(members) - set(voters) - self._lost
        up = set(self.replicas_up()) & replicas or replicas
        change = next_change(voters, members, lost, up, voter_target(len(set(members) | set(voters)),
                                                                     self.five_from))
        if change is None:
            if self._silent_since:
                self.kick(delay=1.0)         # look again when a silence may have become a loss
            return
        kind, addr = change
        if kind == "remove":
            self._lost.add(addr)
            await self._record([v for v in voters if v != addr], voters,
                               "%s silent for %.0fs" % (addr, self.lost_after))
        else:
            await self._record(list(voters) + [addr], voters, "replica %s promoted" % addr)
