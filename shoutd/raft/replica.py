"""The replica feed, replica side: the cluster's state without a vote, through one voter.

A replica holds the whole state and follows every change (feed.py sends
them), over one channel to one voter.  Which voter: the first that answers,
starting at a place chosen by the replica's own name, so that replicas spread
over the voters.  When the channel breaks (the voter died, or was silent for
DEAD_AFTER), the replica tries the next, and catches up from the count it
holds: the ops it missed, or the state whole.

Writes go to the voter, which proposes them (feed.py).  Every write carries
its request id from the start, so a write resent to the next voter after a
broken channel takes effect once (the state remembers requests).  A write not
answered within its timeout may still take effect; the replica then
withdraws it, as RaftNode does for its own writes.

Every op arrives with the count and digest it gives: a replica that would
disagree with its voter drops what it holds and takes the state whole.
"""

import asyncio
import itertools
import logging
import zlib

from ..errors import NO_QUORUM, OUTCOME_UNKNOWN, UNAVAILABLE, ShoutdError
from ..state import ClusterState, ops
from .channel import HANDSHAKE_TIMEOUT, Channel, ChannelError
from .feed import DEAD_AFTER, PING, replica_state
from .node import WRITE_WAIT

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0
RETRY_PAUSE = 0.5           # between two voters that did not answer
SUBMIT_TIMEOUT = 10.0
SETTLE_FOR = 120.0          # how long an unanswered write is withdrawn before giving up


async def greet(secret, addr, hello):
    """(channel, welcome): a channel to the feed at `addr`, opened with `hello` and answered.

    Raises ChannelError (or OSError, TimeoutError) if no voter answers there."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), CONNECT_TIMEOUT)
    channel = await Channel.open(reader, writer, secret, initiator=True)
    try:
        channel.send(hello)
        welcome = await channel.receive(HANDSHAKE_TIMEOUT)
        if welcome.get("t") != "welcome":
            raise ChannelError("no welcome: %r" % (welcome.get("t"),))
    except BaseException:
        channel.close()
        raise
    return channel, welcome


async def probe(secret, node, addr):
    """What the voter serving the feed at `addr` says of the cluster: {"voters", "leader", "serves"}."""
    channel, welcome = await greet(secret, addr, {"t": "hello", "node": node, "at": [0, ""], "probe": True})
    channel.close()
    if not isinstance(welcome.get("voters"), list) or \
            not isinstance(welcome.get("serves", []), list):
        raise ChannelError("no answer about the voters")
    return {"voters": [str(v) for v in welcome["voters"]], "leader": welcome.get("leader"),
            "serves": [str(r) for r in welcome.get("serves", [])]}


def _refused(answer):
    """Whether a voter's answer says the write was not made and may be tried again (no leader, no quorum)."""
    return answer.get("kind") == UNAVAILABLE and answer.get("name") in (None, NO_QUORUM)


class Follower:
    """Follows the cluster through a voter; `state` is the replica's copy, read on the loop."""

    def __init__(self, node, secret, voters, on_change=lambda: None, fallback=lambda: [], on_op=None):
        self.node = node
        self._secret = secret
        self._voters = voters       # () -> the voters' feed addresses, "host:port"
        self._fallback = fallback   # () -> more addresses to try when no voter answered a whole round
        self._on_change = on_change
        self._on_op = on_op or on_change    # after each op: the state moved, the connection did not
        self.state = ClusterState()
        self.voter = None           # the feed address of the voter followed now
        self.voter_node = None      # and its member address (Raft's)
        self.leader = None          # the leader that voter knows of
        self.taken_whole = 0        # snapshots received: a replica back from a short absence needs none
        self._channel = None
        self._pending = {}          # id -> request: writes, resent on every new channel until answered
        self._channels_sent = {}    # id -> on how many channels that write went out
        self._answers = {}          # id -> future, for every request asked and not answered yet
        self._ids = itertools.count(1)
        self.task = None
        self.connected = asyncio.Event()

    def start(self):
        self.task = asyncio.ensure_future(self._run())

    async def stop(self):
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def _order(self):
        voters = sorted(self._voters())
        if not voters:
            return []
        first = zlib.crc32(self.node.encode()) % len(voters)
        return voters[first:] + voters[:first]

    async def _run(self):
        missed = False               # a whole round without a voter: the voters may all have changed
        while True:
            voters = self._order()
            extra = [a for a in self._fallback() if a not in voters] if missed else []
            if extra:
                log.info("no voter of %s answers: trying the other members too", ", ".join(voters) or "none")
            missed = True
            for addr in voters + extra:
                try:
                    await self._follow(addr)
                except (ChannelError, OSError, asyncio.TimeoutError) as e:
                    if self.voter is not None:
                        missed = False
                        log.warning("replica lost voter %s: %s", self.voter, e)
                    elif addr in voters:
                        log.info("voter %s does not serve this replica: %s", addr, e or type(e).__name__)
                finally:
                    self._lost()
                await asyncio.sleep(RETRY_PAUSE)
            if not voters and not extra:
                await asyncio.sleep(RETRY_PAUSE)

    def _lost(self):
        was = self.voter
        self.voter, self.voter_node, self.leader, self._channel = None, None, None, None
        self.connected.clear()
        if was is not None:
            self._on_change()

    async def _follow(self, addr):
        channel, welcome = await greet(self._secret, addr, {"t": "hello", "node": self.node,
                                                            "at": list(self.state.applied)})
        try:
            self.voter, self._channel = addr, channel
            self.voter_node, self.leader = welcome.get("voter"), welcome.get("leader")
            self.connected.set()
            self._on_change()
            log.info("replica follows voter %s (%s)", addr, welcome.get("voter"))
            for rid, request in self._pending.items():
                channel.send(request)           # a write keeps its request id: applied once
                self._channels_sent[rid] = self._channels_sent.get(rid, 0) + 1
            pinger = asyncio.ensure_future(self._ping(channel))
            try:
                while True:
                    self._handle(await channel.receive(DEAD_AFTER))
            finally:
                pinger.cancel()
        finally:
            channel.close()

    async def _ping(self, channel):
        while True:
            await asyncio.sleep(PING)
            channel.send({"t": "ping"})
            await channel.drain()

    def _handle(self, message):
        kind = message.get("t")
        if kind == "op":
            at = message.get("at")
            if at != self.state.applied[0] + 1:
                raise ChannelError("op %r arrived after op %d: a gap" % (at, self.state.applied[0]))
            self.state.apply(message.get("op"))
            if self.state.applied[1] != message.get("digest") and not self.state.halted:
                self.state = ClusterState()      # disagrees with the voter: take the state whole
                raise ChannelError("op %d left this replica with another digest than its voter's" % at)
            self._on_op()
        elif kind == "snapshot":
            state = replica_state(message)
            if state.applied[0] < self.state.applied[0]:
                raise ChannelError("the voter is behind this replica (op %d, here %d)"
                                   % (state.applied[0], self.state.applied[0]))
            self.state = state
            self.taken_whole += 1
            log.info("replica took the state whole at op %d", self.state.applied[0])
            self._on_change()
        elif kind == "ping":
            if message.get("leader") != self.leader:
                self.leader = message.get("leader")
                self._on_change()
        elif kind == "result":
            fut = self._answers.get(message.get("id"))
            if fut is not None and not fut.done():
                fut.set_result(message)

    async def submit(self, op, timeout=SUBMIT_TIMEOUT):
        """Replicate `op` through the voter; its value, or ShoutdError as RaftNode.submit raises."""
        ops.check_proposable(op, self.state)
        op = dict(op)
        op.setdefault("req", ops.new_request_id())
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            answer, channels = await self._attempt(op, began + timeout - loop.time(), timeout)
            if not (_refused(answer) and channels == 1 and loop.time() - began < min(WRITE_WAIT, timeout)):
                break
            # Nothing was changed (the voter proposed it once, under this id, and settled it, or not at all):
            # as on a voter, try again under a new id while the cluster elects a leader.
            log.info("%s %s: %s; trying again", op.get("op"), op["req"], answer["error"])
            op = dict(op, req=ops.new_request_id())
            await asyncio.sleep(0.1)          # a refusal comes at once: give the election a moment
        if "error" in answer and channels > 1:
            # An earlier voter had it when its channel broke, and may have proposed it: that attempt can
            # still commit, whatever this voter says of its own.  Settle it, and say so.
            asyncio.ensure_future(self._settle(op))
            raise ShoutdError("voter %s refused %s (%s), but an earlier voter had it when its channel broke, so "
                              "this host cannot tell yet whether it took effect; shoutd withdraws it if it did"
                              % (self.voter, op.get("op"), answer["error"]), UNAVAILABLE, OUTCOME_UNKNOWN)
        if "error" in answer:
            raise ShoutdError(str(answer["error"]), str(answer.get("kind")), answer.get("name"))
        return answer.get("value")

    async def _attempt(self, op, left, timeout):
        """(answer, on how many channels it went) for one request id, within `left` of the write's `timeout`."""
        try:
            return await self._request(op, max(left, 0.0))
        except asyncio.TimeoutError:
            asyncio.ensure_future(self._settle(op))
            raise ShoutdError("no voter confirmed %s within %gs (%s), so this host cannot tell yet whether it took "
                              "effect; shoutd withdraws it if it did. Try again once a voter answers"
                              % (op.get("op"), timeout, self._where()),
                              UNAVAILABLE, OUTCOME_UNKNOWN) from None

    async def _request(self, op, timeout):
        """(The voter's answer to `op`, on how many channels it went): sent now and again on every new
        channel until the answer comes."""
        return await self._ask({"t": "submit", "op": op}, timeout, resend=True)

    async def _ask(self, request, timeout, resend):
        """(the answer to `request`, on how many channels it went)."""
        rid = next(self._ids)
        request = dict(request, id=rid)
        fut = asyncio.get_running_loop().create_future()
        self._answers[rid] = fut
        if resend:
            self._pending[rid] = request
        if self._channel is not None:
            self._channel.send(request)
            self._channels_sent[rid] = 1
        try:
            answer = await asyncio.wait_for(fut, timeout)
            return answer, self._channels_sent.get(rid, 0)
        finally:
            self._pending.pop(rid, None)
            self._answers.pop(rid, None)
            self._channels_sent.pop(rid, None)

    async def membership(self, kind, address, timeout):
        """AddPeer ("add") or RemovePeer ("remove") of `address`, run on the voter followed now."""
        if self._channel is None:
            raise ShoutdError("this host is a replica and reaches no voter to change the membership (%s)"
                              % self._where(), UNAVAILABLE, "NoQuorum")
        try:
            answer, _ = await self._ask({"t": "membership", "kind": kind, "address": address}, timeout,
                                        resend=False)
        except asyncio.TimeoutError:
            raise ShoutdError("voter %s did not answer within %gs; see `shoutdctl peers` for what changed"
                              % (self.voter, timeout), UNAVAILABLE) from None
        if "error" in answer:
            raise ShoutdError(str(answer["error"]), str(answer.get("kind")), answer.get("name"))
        return answer.get("value")

    def _where(self):
        if self.voter is not None:
            return "following voter %s" % self.voter
        return "no voter reachable of %s" % (", ".join(self._order()) or "none known")

    async def _settle(self, op):
        withdraw = ops.withdraw(self.node, op["req"])
        try:
            answer, _ = await self._request(withdraw, SETTLE_FOR)
        except asyncio.TimeoutError:
            log.error("could not withdraw %s %s within %gs: it may hold what it took", op.get("op"), op["req"],
                      SETTLE_FOR)
            return
        log.info("withdrew %s %s: %s", op.get("op"), op["req"], answer.get("error") or "done")
