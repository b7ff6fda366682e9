"""The replica feed, voter side: committed ops out to replicas, their writes in.

A replica (issue 16, docs/replicas.md) follows the cluster without being in
Raft: it keeps one channel (channel.py) to one voter, which sends it every op
its own state applies, in order, numbered by the state's applied count
(state/__init__.py: equal on every host that applied the same log).  Raft's
heartbeats, elections and commits stay among the voters, whatever the number
of replicas; what a voter spends per replica is one frame per applied op, at
most one write per SPACING (what was applied meanwhile goes in one), and a
ping every PING seconds.

Catching up.  A replica says which count and digest it holds.  If this voter
still has every op after that count in its tail (the last TAIL ops) and its
digest at that count is the same, it sends those ops; otherwise it sends the
whole state once (a snapshot), then ops.  A snapshot installed here (this
voter was far behind its leader) breaks the tail, so every replica then gets
the new state whole.

Membership.  AddPeer and RemovePeer on a replica run on its voter, as
if called there (service/membership.py); they are not resent to another
voter when the channel breaks: the caller is told, and looks.

Writes.  A replica's write goes to its voter, which proposes it as its own
(RaftNode.submit), once and under the replica's request id, and answers once
its state has applied it.  A refusal goes back to the replica, which tries
again (replica.py): were the voter to try again under a new id, a replica
that meanwhile moved to another voter could end with its write applied
twice.  The op reached the replica before the answer, on the same channel,
so the replica reads its own write.  A replica writes only its own records: every op names its
proposer (`node`), which must be the host the replica said it is.

A replica that reads too slowly is dropped once MAX_BACKLOG bytes wait for
it; it reconnects and catches up from where it is.
"""

import asyncio
import collections
import logging
import time

from ..errors import INTERNAL, INVALID, ShoutdError
from ..state import ClusterState
from .channel import HANDSHAKE_TIMEOUT, Channel, ChannelError, encode

log = logging.getLogger(__name__)

TAIL = 4096                 # ops kept for replicas that come back after a short absence
PING = 2.0                  # seconds between pings each way
DEAD_AFTER = 3 * PING + 1   # a channel silent this long is gone
MAX_BACKLOG = 16 << 20      # bytes waiting for one replica before it is dropped
SPACING = 0.05              # seconds between two writes of ops to the replicas (see Feed)


FEED_PORT_OFFSET = 1        # a voter serves the feed on its Raft port + 1 (TCP 7381 by default)


def feed_address(raft_address):
    """Where the voter at `raft_address` serves the feed."""
    host, port = raft_address.rsplit(":", 1)
    return "%s:%d" % (host, int(port) + FEED_PORT_OFFSET)


def whose(op, node):
    """Refuse an op of a replica that names another host's records."""
    if not isinstance(op, dict):
        raise ShoutdError("a replica's write is not an operation: %r" % (op,), INVALID)
    if op.get("node") != node or op.get("member", node) != node:
        raise ShoutdError("replica %s may write only its own records, and %s names %s"
                          % (node, op.get("op"), op.get("member", op.get("node"))), INVALID)


class Session:
    """One replica's channel on this voter."""

    def __init__(self, node, channel):
        self.node = node
        self.channel = channel
        self.since = time.time()
        self.sent = 0               # how much of the feed's outbox this replica was sent already

    def push(self, *messages):
        """Send `messages`, dicts or already encoded (channel.encode), in one write."""
        self.channel.send_encoded(*(m if isinstance(m, bytes) else encode(m) for m in messages))
        if self.channel.backlog() > MAX_BACKLOG:
            raise ChannelError("more than %d MiB waiting for it" % (MAX_BACKLOG >> 20))


class Feed:
    """Serves replicas from this voter's loop copy of the state.

    `state` returns that copy (ClusterState); `submit` is RaftNode.submit.
    `follow` hooks the feed to the copy (machine.py LoopReplica).

    What the copy applied goes out to the replicas once the writers waiting
    for it here were answered (a container start on this host waits for no
    replica), and at most once per SPACING: ops that come faster wait and go
    in one write.  So a voter's cost per replica is bounded by the time, not
    by the rate of ops, and a replica wakes once for many; a change reaches
    the replicas at most SPACING later.  A replica's own write is answered
    at once, after what waits for that replica.
    """

    def __init__(self, node, secret, state, submit, leader=lambda: None, ready=lambda: True, membership=None):
        self.node = node
        self._membership = membership   # async (kind "add" | "remove", address) -> value: AddPeer, RemovePeer
        self._ready = ready         # () -> whether this voter's state is current: never serve an old one
        self._leader = leader       # () -> the leader this voter knows of, told to replicas
        self._secret = secret
        self._state = state
        self._submit = submit
        self.sessions = {}          # replica node -> Session
        self.gone = {}              # replica node -> loop time its session here ended (multicast.py reads it)
        self._tail = collections.deque()   # (count, digest, op), counts consecutive
        self._base = state().applied        # (count, digest) just before the tail
        self._server = None
        self._pinger = None
        self._outbox = []           # encoded messages applied here and not yet sent to every replica
        self._flushed = float("-inf")   # loop time of the last flush
        self._timer = None          # the flush scheduled, if any

    # -- following the state -------------------------------------------------------------

    def follow(self, copy):
        """Be told of what `copy` (a LoopReplica) applies: each item, then each batch's end."""
        copy.on_apply = self.applied
        copy.after_drain = self.drained

    def applied(self, kind, op):
        count, digest = self._state().applied
        if kind == "op" and count == self._head()[0] + 1:
            self._tail.append((count, digest, op))
            if len(self._tail) > TAIL:
                dropped = self._tail.popleft()
                self._base = dropped[:2]
            if self.sessions:                # a session that starts later gets the tail
                self._outbox.append(encode({"t": "op", "at": count, "digest": digest, "op": op}))
        elif (count, digest) != self._head():
            # A reset (a snapshot installed), or a state that stopped counting:
            # the tail no longer leads here, so everyone gets the state whole.
            self._tail.clear()
            self._base = (count, digest)
            if self.sessions:
                self._outbox.append(encode(self._snapshot()))

    def drained(self):
        """A batch was applied and its writers woken: send it once they have run, and SPACING after the last."""
        if self._outbox and self._timer is None:
            loop = asyncio.get_running_loop()
            # A time already past runs after the writers' wake-ups, which are in the ready queue already.
            self._timer = loop.call_at(max(loop.time(), self._flushed + SPACING), self.flush)

    def flush(self):
        """Send every replica what was applied and not sent to it yet, in one write each."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._outbox:
            return
        for session in list(self.sessions.values()):
            self._catch_up(session)
            session.sent = 0
        self._outbox = []
        self._flushed = asyncio.get_running_loop().time()

    def _catch_up(self, session):
        """Send `session` now what waits for every replica (its own write's answer follows)."""
        if session.sent < len(self._outbox):
            self._send(session, *self._outbox[session.sent:])
            session.sent = len(self._outbox)

    def _head(self):
        return self._tail[-1][:2] if self._tail else self._base

    def _since(self, count, digest):
        """The ops after (count, digest), or None if this voter cannot tell them."""
        base_count = self._base[0]
        if count == base_count:
            matches = digest == self._base[1]
        elif base_count < count <= self._head()[0]:
            matches = self._tail[count - base_count - 1][1] == digest
        else:
            matches = False
        if not matches:
            return None
        return [{"t": "op", "at": c, "digest": d, "op": op} for c, d, op in list(self._tail)[count - base_count:]]

    def _snapshot(self):
        state = self._state()
        return {"t": "snapshot", "at": list(state.applied), "data": state.data}

    def _broadcast(self, message):
        if not self.sessions:
            return
        message = encode(message)            # once, whatever the number of replicas
        for session in list(self.sessions.values()):
            self._send(session, message)

    def _send(self, session, *messages):
        try:
            session.push(*messages)
        except (ChannelError, TypeError, ValueError) as e:
            log.warning("replica %s dropped: %s", session.node, e)
            self._forget(session)

    def _forget(self, session):
        if self.sessions.get(session.node) is session:
            del self.sessions[session.node]
            self.gone[session.node] = asyncio.get_running_loop().time()
            log.info("replica %s left this voter", session.node)
        session.channel.close()

    # -- serving ---------------------------------------------------------------------------

    async def start(self, host, port):
        self._server = await asyncio.start_server(self._serve, host, port)
        self._pinger = asyncio.ensure_future(self._ping())

    async def stop(self):
        if self._timer is not None:
            self._timer.cancel()
        if self._pinger:
            self._pinger.cancel()
        if self._server:
            self._server.close()
        for session in list(self.sessions.values()):
            self._forget(session)

    async def _ping(self):
        while True:
            await asyncio.sleep(PING)
            self._broadcast({"t": "ping", "leader": self._leader()})

    async def _serve(self, reader, writer):
        session = None
        try:
            channel = await Channel.open(reader, writer, self._secret, initiator=False)
            hello = await channel.receive(HANDSHAKE_TIMEOUT)
            node, at = hello.get("node"), hello.get("at")
            if hello.get("t") != "hello" or not isinstance(node, str) or not (
                    isinstance(at, list) and len(at) == 2 and isinstance(at[0], int) and isinstance(at[1], str)):
                raise ChannelError("a hello that does not say who it is and what it holds: %r" % (hello,))
            if not self._ready():
                raise ChannelError("this voter has not caught up with its leader yet")
            if hello.get("probe"):
                # Who votes, for a host that lost its leader (daemon.py: a voter removed while away), and
                # whom this voter serves, for a voter that lost a replica (multicast.py).
                channel.send({"t": "welcome", "voter": self.node, "leader": self._leader(),
                              "voters": self._state().data["voters"], "serves": sorted(self.sessions)})
                await channel.drain()
                return
            session = Session(node, channel)
            session.sent = len(self._outbox)     # what waits in the outbox is in the tail it gets below
            old = self.sessions.get(node)
            if old is not None:
                self._forget(old)            # the same replica, reconnected before its old channel timed out
            self.sessions[node] = session
            self.gone.pop(node, None)
            session.push({"t": "welcome", "voter": self.node, "leader": self._leader()})
            tail = self._since(*at)
            for message in tail if tail is not None else [self._snapshot()]:
                session.push(message)
            log.info("replica %s (%s) follows this voter from op %d (%s)", node, channel.peer[0], at[0],
                     "%d ops to catch up" % len(tail) if tail is not None else "sent the state whole")
            while True:
                message = await channel.receive(DEAD_AFTER)
                if message.get("t") in ("submit", "membership"):
                    asyncio.ensure_future(self._answer(session, message))
                await channel.drain()
        except ChannelError as e:
            who = session.node if session else "%s:%s" % (writer.get_extra_info("peername") or ("?", "?"))[:2]
            log.info("replica channel from %s closed: %s", who, e)
        finally:
            if session is not None:
                self._forget(session)
            else:
                writer.close()

    async def _answer(self, session, message):
        reply = {"t": "result", "id": message.get("id")}
        try:
            if message.get("t") == "membership":
                # AddPeer or RemovePeer run on a replica (its D-Bus checked the caller): the same call here.
                kind, address = message.get("kind"), message.get("address")
                if self._membership is None or kind not in ("add", "remove") or not isinstance(address, str):
                    raise ShoutdError("voter %s cannot change the membership for a replica" % self.node, INVALID)
                log.info("replica %s asks to %s peer %s", session.node, kind, address)
                reply["value"] = await self._membership(kind, address)
            else:
                op = message.get("op")
                whose(op, session.node)
                reply["value"] = await self._submit(op, again=False)
        except ShoutdError as e:
            reply.update(error=e.message, kind=e.kind, name=e.name)
        except Exception as e:  # noqa: BLE001 - one replica's write must not end the feed
            log.exception("bug: a write of replica %s failed", session.node)
            reply.update(error="internal error on voter %s: %s (a bug in shoutd; please report it)" % (self.node, e),
                         kind=INTERNAL, name=None)
        if self.sessions.get(session.node) is session:
            self._catch_up(session)  # the write's op before its answer: the replica reads its own write
            self._send(session, reply)


def replica_state(message):
    """The state a snapshot message carries, checked against the count it claims."""
    state = ClusterState(message.get("data"))
    if list(state.applied) != message.get("at"):
        raise ChannelError("a snapshot whose state does not match its count")
    return state
