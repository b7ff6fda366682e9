"""One member of the Raft cluster: PySyncObj built, watched and bridged to asyncio.

What the rest of shoutd gets from here:
- `state`: the loop's replica of the cluster state (machine.py), never copied.
- `status`: a RaftStatus published by the tick thread after every tick, so
  the loop never reads PySyncObj's internals while they change.  Its
  `has_quorum` is honest: the leader has heard from a majority, or a
  follower from its leader, within the election timeout (PySyncObj's own
  hasQuorum counts open TCP connections, true on a host cut off by a firewall).
- `submit(op)`: replicate one op and get a definite answer (below).
- `caught_up`: set once an op this process proposed has committed and been
  applied here.  A node that restarts and wins the election may believe a
  commit index older than the entries it holds; nothing acts on the state
  (kernel, Docker, READY=1) before this event.
- `health()`: whether the tick thread is alive and ticking and the journal
  writable, for the watchdog.
- `halted`: why this host stopped applying the cluster's log (it runs an
  older release than the cluster's state version), or None.  Raft is then
  stopped here on purpose, the journal left as it is for the newer release,
  and every write is refused with that message.

Nothing slow runs on the tick thread, which sends the heartbeats: the
journal is written by a thread of its own (flusher.py), and what may be
claimed meanwhile is decided from what is on disk (durability.py).
Elections need a won pre-vote (election.py), so a member that was stuck or
cut off cannot depose a healthy leader.  Every leader change and election is
logged, one line each.

A definite answer.  PySyncObj reports some failures that may still commit
later (the leader changed while a forwarded command was in flight), and a
timeout says nothing at all.  Such a command is settled by proposing
`withdraw` for its request id (state.py): once that commits, the command can
never take effect, or it already has and its result is returned.  Only when
even the withdrawal cannot commit (no quorum) does the caller get an
"outcome unknown" error, and the withdrawal goes on in the background.
Commands are never queued inside PySyncObj while there is no leader
(commandsWaitLeader is off), so nothing refused commits later.  A write that
arrives during an election waits here for the new leader, up to WRITE_WAIT;
a host that has had no leader for longer than that (a minority) refuses at
once, naming the members it cannot reach.
"""

import asyncio
import dataclasses
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.syncobj import _RAFT_STATE

from ..errors import NO_QUORUM, OUTCOME_UNKNOWN, UNAVAILABLE, ShoutdError
from ..state import ops
from ..state.ops import new_request_id
from . import journal
from .durability import Durability
from .election import Elections
from .machine import NUDGE, Handover, LoopReplica, TickMachine
from .transport import GuardedTransport

log = logging.getLogger(__name__)

# Seconds without a leader before a member asks for pre-votes.  Heartbeats
# go every 0.1 s; under a Docker load the leader's gaps reach ELECTION_MIN
# never (bench/heartbeat.py: see the README), and a dead leader is replaced
# within ELECTION_MAX plus a round trip, within the 3 s failover goal.
ELECTION_MIN, ELECTION_MAX = 1.0, 2.0
LEADER_FALLBACK = 2.5     # a leader that hears from no majority for this long steps down
CONNECTION_TIMEOUT = 3.5  # PySyncObj drops a connection silent for this long (keepalives: transport.py)
# How long a write waits for a leader (an election, a failover) before it is
# refused: twice the longest failover, far within Docker's plugin timeout.
WRITE_WAIT = 6.0
STALE_STATUS = 0.5        # a status the tick thread has not refreshed for this long says nothing
SUBMIT_TIMEOUT = 10.0
SETTLE_TIME = 5.0         # after a timeout, how long to try to settle the outcome before answering
WITHDRAW_TRY = 2.0        # one attempt to withdraw
TICK_STALL = 10.0         # a tick thread silent this long is wedged

# Outcomes of one proposal.
DONE, REFUSED, UNKNOWN = "done", "refused", "unknown"
_REFUSED = {
    FAIL_REASON.QUEUE_FULL: "the Raft command queue is full",
    FAIL_REASON.MISSING_LEADER: "the cluster has no leader",
    FAIL_REASON.DISCARDED: "a new leader replaced the command",
    FAIL_REASON.NOT_LEADER: "the leader changed before the command reached it",
    FAIL_REASON.REQUEST_DENIED: "the cluster refused the request",
}
_UNKNOWN = {
    FAIL_REASON.LEADER_CHANGED: "the leader changed while the command was in flight",
    getattr(FAIL_REASON, "UNKNOWN_OUTCOME", 7): "the leader could not tell whether the command committed",
}


@dataclass(frozen=True)
class RaftStatus:
    self: str
    leader: Optional[str] = None
    term: int = 0
    role: str = "follower"
    has_quorum: bool = False
    unreachable: tuple = ()                     # members this host cannot reach, as far as it can tell
    leader_changed: float = 0.0                 # wall-clock time of the last leader change seen here
    replayed: bool = False                      # PySyncObj applied what it knows to be committed (not
                                                # yet enough to act on: see caught_up)
    nodes: dict = field(default_factory=dict)   # member -> "self" | "connected" | "disconnected"
    silent: tuple = ()                          # members not heard from within the election timeout
    commit_index: int = 0
    last_applied: int = 0

    def key(self):
        """What followers of the status care about (indexes move on every entry)."""
        return (self.leader, self.term, self.role, self.has_quorum, self.replayed, tuple(sorted(self.nodes.items())),
                self.silent)


@dataclass(frozen=True)
class Problem:
    text: str
    fatal: bool       # the thread is gone: only a restart helps (a wedged one may come back)

    def __str__(self):
        return self.text


class _Hooks:
    """What the transport and the tick call back into, on the tick thread."""

    def __init__(self, durability, elections, utility_messages):
        self.durability = durability
        self.elections = elections
        self.utility_messages = utility_messages
        self.transport = None            # the transport registers itself as PySyncObj builds it
        self.wake = None                 # and how to wake the tick thread (the journal's flusher calls it)


class _SyncObj(SyncObj):
    """SyncObj with a hook around each tick: durability first, status after."""

    def __init__(self, before_tick, after_tick, *args, **kwargs):
        self._before_tick = before_tick      # set before SyncObj records its own attributes
        self._after_tick = after_tick
        super().__init__(*args, **kwargs)

    def _onTick(self, timeToWait=0.0):
        self._before_tick(self)
        super()._onTick(timeToWait)
        self._after_tick(self)

    def _checkCommandsToApply(self):
        # PySyncObj's leader sends appendEntries to every follower after each command it takes from
        # the queue, so a command and the no-op behind it (RaftNode._propose) cost two rounds of
        # encrypted messages and acks.  Take what is queued, then send once: the same entries, one
        # round.  Only the tick thread runs this, and only it sends appendEntries.
        wanted = []
        self._SyncObj__sendAppendEntries = lambda: wanted.append(True)    # shadows the method meanwhile
        try:
            super()._checkCommandsToApply()
        finally:
            del self._SyncObj__sendAppendEntries
        if wanted:
            self._SyncObj__sendAppendEntries()


def call_on(loop, fn, *args):
    """call_soon_threadsafe from the tick thread; a loop that is gone (shutdown) is no error."""
    if loop is None:
        return
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


class RaftNode:
    """One member of the Raft cluster.  Build on the main thread (PySyncObj's tick
    thread ends with the thread that built it), then `attach` on the loop."""

    def __init__(self, self_addr, peer_addrs, secret, journal_file=None, dump_file=None, durable=True,
                 utility_messages=None, legacy_journal=None):
        self.self_addr = self_addr
        self.secret = secret
        self._files = (journal_file, dump_file)
        self._legacy = legacy_journal
        self.durable = durable
        self.utility_messages = dict(utility_messages or {})
        self._handover = Handover()
        self.replica = LoopReplica(self._handover)
        self.status = RaftStatus(self=self_addr, nodes={self_addr: "self"})
        self.loop = None
        self.caught_up = None            # asyncio.Event, made in attach()
        self._status_changed = None
        self._on_change = lambda: None
        self._last_tick = time.monotonic()
        self._quorum_seen = time.monotonic()     # a new node gets the full wait for its first election
        self.halted = None
        self._leader_seen = (None, 0)            # (leader, term) last logged
        self._election_logged = 0                # the last term whose election was logged
        self._settling = set()
        self._generation = 0
        self._tick_thread = None
        self._rebuilding = False         # the old tick thread has ended on purpose; the new one is coming
        self._journal_slot = []
        self._build(peer_addrs)

    def _build(self, peer_addrs):
        self._generation += 1
        generation = self._generation
        self.machine = TickMachine(self._handover)
        self.machine.on_halt = self._halt
        journal_file, dump_file = self._files
        conf = SyncObjConf(
            password=self.secret,            # Fernet: authenticated before anything is unpickled
            bindAddress=self.self_addr,      # never 0.0.0.0
            dynamicMembershipChange=True,
            journalFile=journal_file,
            fullDumpFile=dump_file,
            useFork=False,                   # forking a threaded process can deadlock
            commandsWaitLeader=False,        # see the module note: refuse, never queue
            # Every container start and stop commits several commands, so
            # commit latency is what `docker run` feels: send commands at once
            # (what is queued goes in one round, _SyncObj._checkCommandsToApply);
            # the no-op in _propose() then commits a command in one round trip.
            appendEntriesUseBatch=False,
            connectionRetryTime=1.0,
            connectionTimeout=CONNECTION_TIMEOUT,
            raftMinTimeout=ELECTION_MIN,
            raftMaxTimeout=ELECTION_MAX,
            leaderFallbackTimeout=LEADER_FALLBACK,
        )
        others = [p for p in peer_addrs if p != self.self_addr]
        # The tick thread starts inside SyncObj(): everything the hooks use
        # must exist before, hence the slots filled by the builders.
        with journal.building(dump_file, self.durable, self._legacy) as self._journal_slot:
            hooks = _Hooks(Durability(self._journal_slot), Elections(ELECTION_MIN, ELECTION_MAX),
                           self.utility_messages)
            self.sync = _SyncObj(lambda sync: self._before_tick(sync, hooks),
                                 lambda sync: self._after_tick(sync, hooks, generation),
                                 self.self_addr, others, conf=conf, consumers=[self.machine],
                                 transportClass=GuardedTransport.with_hooks(hooks))
        for j in self._journal_slot:
            j.flusher.on_durable = hooks.wake

    # -- the tick thread -----------------------------------------------------

    def _before_tick(self, sync, hooks):
        self._tick_thread = threading.current_thread()
        if hooks.transport is None:
            return                       # PySyncObj is still being built
        hooks.durability.before_tick(sync)
        hooks.elections.before_tick(sync, hooks.transport.send)

    def _halt(self, why):
        """The state machine cannot go on (tick thread): stop Raft here, keep the journal for the upgrade."""
        self.halted = why
        log.error("stopping Raft on this host: %s", why)
        self.sync.destroy()              # the tick thread ends after this tick; nothing more is written
        self.status = dataclasses.replace(self.status, role="halted", leader=None, has_quorum=False)
        call_on(self.loop, self._stopped_applying)

    def _stopped_applying(self):
        self.caught_up.clear()           # nothing acts on a state that stopped moving
        self._status_moved()

    def _after_tick(self, sync, hooks, generation):
        if generation != self._generation or self.halted:
            return                       # the last ticks of a node replaced by rebuild(), or halted
        now = time.monotonic()
        self._last_tick = now
        heard = hooks.transport.heard
        leader = sync._getLeader()
        others = sync.otherNodes
        nodes = {self.self_addr: "self"}
        for n in others:
            nodes[n.id] = "connected" if sync.isNodeConnected(n) else "disconnected"
        fresh = {n.id for n in others if now - heard.get(n.id, -1e9) <= ELECTION_MAX}
        silent = tuple(sorted(n.id for n in others if n.id not in fresh))
        if sync._isLeader():
            role, quorum = "leader", len(fresh) + 1 > (len(others) + 1) / 2
            unreachable = silent
        elif leader is not None and leader.id in fresh:
            role, quorum, unreachable = "follower", True, ()
            hooks.elections.settled()
        else:
            # Followers hear only the leader, so who else is unreachable shows
            # only once this host has asked for pre-votes for a while.
            role, quorum = "follower" if leader is not None else "candidate", False
            unreachable = hooks.elections.unanswered(heard, [n.id for n in others], now)
            if leader is not None and leader.id not in unreachable:
                unreachable = tuple(sorted(unreachable + (leader.id,)))
        status = RaftStatus(self=self.self_addr, leader=leader.id if leader is not None else None,
                            term=sync.raftCurrentTerm, role=role, has_quorum=quorum, replayed=sync.isReady(),
                            nodes=nodes, silent=silent, unreachable=unreachable,
                            leader_changed=self.status.leader_changed, commit_index=sync.raftCommitIndex,
                            last_applied=sync.raftLastApplied)
        if quorum:
            self._quorum_seen = now
        status = self._log_events(status, sync)
        changed = status.key() != self.status.key()
        self.status = status
        if changed:
            call_on(self.loop, self._status_moved)

    def _log_events(self, status, sync):
        """One line per election and per leader change (seen here); the status records when the leader changed."""
        if sync._SyncObj__raftState == _RAFT_STATE.CANDIDATE and status.term > self._election_logged:
            self._election_logged = status.term
            log.info("election for term %d: this host asks for votes", status.term)
        if status.leader is not None and (status.leader, status.term) != self._leader_seen:
            before = self._leader_seen[0]
            self._leader_seen = (status.leader, status.term)
            if status.leader != before:
                log.info("leader changed: %s in term %d (before: %s)", status.leader, status.term, before or "none")
                status = dataclasses.replace(status, leader_changed=time.time())
        return status

    # -- the loop side ---------------------------------------------------------

    def attach(self, loop, on_change=None):
        """Start feeding the replica on `loop`; `on_change` runs there after state or status changes."""
        on_change = on_change or self._on_change
        self.loop = loop
        self.caught_up = asyncio.Event()
        self._status_changed = asyncio.Event()
        self._on_change = on_change
        self.replica.attach(loop, on_change)
        loop.call_soon(self._status_moved)

    def _status_moved(self):
        self._status_changed.set()
        self._status_changed = asyncio.Event()
        self._on_change()

    @property
    def state(self):
        """The loop's replica of the cluster state: read it, never change it."""
        return self.replica.state

    def health(self):
        """None while the tick thread is alive and ticking, else a Problem."""
        if self._rebuilding or self.halted:
            return None                  # the Raft thread ended on purpose
        failed = next((j.flusher.failed for j in self._journal_slot if j.flusher.failed), None)
        if failed:
            return Problem(failed, fatal=True)
        if not self.sync.tick_thread_alive():
            return Problem("the Raft thread has stopped", fatal=True)
        silent = time.monotonic() - self._last_tick
        if silent > TICK_STALL:
            return Problem("the Raft thread has not ticked for %.0fs" % silent, fatal=False)
        return None

    def members(self):
        return sorted(self.status.nodes)

    def slowest_flush(self):
        """The slowest journal flush of the last ten minutes, in seconds."""
        return max((j.flusher.slowest() for j in self._journal_slot), default=0.0)

    def _bridge(self):
        """A future on the loop and a PySyncObj callback (tick thread) that settles it."""
        loop = self.loop
        fut = loop.create_future()

        def callback(result, err):
            def settle():
                if not fut.done():
                    fut.set_result((result, err))
            call_on(loop, settle)
        return fut, callback

    async def until_quorum(self, wait=WRITE_WAIT, describe=None):
        """Return once the cluster has a reachable leader; raise NoQuorum after `wait` seconds.

        The wait rides out an election.  A host that has been without a
        leader for longer than WRITE_WAIT (a minority) refuses at once; time
        in which the tick thread did not run (the status is stale) never
        counts as time without a leader.
        """
        now = time.monotonic()
        lost_for = now - self._quorum_seen if now - self._last_tick < STALE_STATUS else 0.0
        deadline = self.loop.time() + max(0.0, min(wait, WRITE_WAIT - lost_for))
        while not self.status.has_quorum:
            left = deadline - self.loop.time()
            if left <= 0:
                raise ShoutdError(self.no_quorum_message(describe), UNAVAILABLE, NO_QUORUM)
            try:
                await asyncio.wait_for(self._status_changed.wait(), min(left, 0.25))
            except asyncio.TimeoutError:
                pass

    def no_quorum_message(self, describe=None):
        """Which members this host cannot reach; `describe` names a member for people."""
        describe = describe or (lambda member: member)
        st = self.status
        total = len(st.nodes)
        unreachable = [describe(m) for m in st.unreachable]
        text = "the cluster has no quorum: %d of its %d members must reach each other to elect a leader" \
               % (total // 2 + 1, total)
        if unreachable:
            text += ", and this host, %s, cannot reach %s. Bring %s back or reconnect them (TCP port %s)" \
                % (describe(self.self_addr), " or ".join(unreachable), "it" if len(unreachable) == 1 else "them",
                   self.self_addr.rsplit(":", 1)[1])
        elif st.leader is None:
            text += "; no leader is elected yet, try again in a moment"
        return text

    async def _propose(self, op, timeout):
        """One attempt: (DONE, result) | (REFUSED, why) | (UNKNOWN, why)."""
        fut, callback = self._bridge()
        self.machine.execute(op, callback=callback)
        # PySyncObj's leader counts a follower's ack as one entry short of what
        # the follower holds, so an entry commits only once the next entry or
        # heartbeat has reached the followers.  A no-op right behind the
        # command is that next entry, now rather than at the next heartbeat.
        self.machine.execute(NUDGE)
        deadline = self.loop.time() + timeout
        while not fut.done():
            left = deadline - self.loop.time()
            if left <= 0:
                return UNKNOWN, "it did not commit within %gs" % timeout
            if not self.status.has_quorum:
                # It cannot commit until a majority is back: stop waiting now.
                return UNKNOWN, "the cluster lost its quorum before the command committed"
            moved = asyncio.ensure_future(self._status_changed.wait())
            await asyncio.wait([fut, moved], timeout=min(left, 0.5), return_when=asyncio.FIRST_COMPLETED)
            moved.cancel()
        result, err = fut.result()
        if err == FAIL_REASON.SUCCESS:
            await self.replica.until(result.get("seq"))
            return DONE, result
        if err in _REFUSED:
            return REFUSED, _REFUSED[err]
        return UNKNOWN, _UNKNOWN.get(err, "Raft error %s" % err)

    async def submit(self, op, timeout=SUBMIT_TIMEOUT, describe=None, again=True):
        """Replicate `op`; return its value, or raise ShoutdError with a definite outcome.

        Every refusal means the op will never take effect.  The one exception
        is an error named OutcomeUnknown, which says so.  An op (or op form)
        newer than the cluster's state version is refused before it is
        proposed, naming the hosts still on an older release.  An attempt that an
        election cut short, and that is known to have had no effect, is made
        again (as a new request) for up to WRITE_WAIT: the caller sees the
        write succeed once the new leader is in place.  Not with `again`
        false: a replica's write (feed.py) keeps the request id the replica
        gave it, which is the one the replica withdraws if it moves on.
        """
        if self.halted:
            raise ShoutdError(self.halted, UNAVAILABLE, "UpgradeNeeded")
        ops.check_proposable(op, self.state)
        op = dict(op)
        op.setdefault("req", new_request_id())
        name = op.get("op")
        self._ensure_attached()
        retry_until = self.loop.time() + WRITE_WAIT
        while True:
            await self.until_quorum(min(WRITE_WAIT, timeout), describe)
            outcome, detail = await self._propose(op, timeout)
            if outcome == UNKNOWN:
                log.info("%s %s: %s; withdrawing it", name, op["req"], detail)
                outcome, detail = await self._settle(op, SETTLE_TIME)
                if outcome == UNKNOWN:
                    self._settle_later(op)
                    raise ShoutdError("the cluster did not confirm %s and cannot tell yet whether it took effect "
                                      "(%s); shoutd keeps settling it and undoes it if it did. Try again once the "
                                      "cluster has a quorum" % (name, self.no_quorum_message(describe)),
                                      UNAVAILABLE, OUTCOME_UNKNOWN)
            if outcome != REFUSED or not again or self.loop.time() >= retry_until:
                break
            log.info("%s %s: %s, nothing was changed; trying again", name, op["req"], detail)
            op = dict(op, req=new_request_id())
            await asyncio.sleep(0.1)  # a refusal comes at once: give the election a moment
        if outcome == REFUSED:
            if not self.status.has_quorum:
                raise ShoutdError("cannot %s: %s" % (name, self.no_quorum_message(describe)), UNAVAILABLE, NO_QUORUM)
            raise ShoutdError("cannot %s: %s; nothing was changed, try again" % (name, detail), UNAVAILABLE)
        if "error" in detail:
            raise ShoutdError(detail["error"], detail["kind"])
        return detail["value"]

    async def _settle(self, op, within):
        """Withdraw `op` until that commits: (DONE, its result as if it had answered) or (REFUSED, why)."""
        deadline = self.loop.time() + within
        withdraw = ops.withdraw(op.get("node"), op["req"])
        while True:
            left = deadline - self.loop.time()
            if left <= 0:
                return UNKNOWN, None
            try:
                await self.until_quorum(min(left, WRITE_WAIT))
            except ShoutdError:
                return UNKNOWN, None         # no majority in sight: answer now, settle in the background
            if self.status.has_quorum:
                # Short attempts: an entry appended by a leader that then steps
                # down answers only once its index is reached, which may take
                # long on an idle cluster.  Withdrawing again is harmless.
                outcome, result = await self._propose(dict(withdraw, req=new_request_id()), min(left, WITHDRAW_TRY))
                if outcome == DONE and "value" in result:
                    value = result["value"]
                    if "applied" in value:
                        log.info("%s %s had committed after all; its result stands", op.get("op"), op["req"])
                        return DONE, {"value": value["applied"]}
                    log.info("%s %s withdrawn: it has no effect", op.get("op"), op["req"])
                    return REFUSED, "it did not commit in time"
            await asyncio.sleep(min(0.2, max(left, 0)))  # then try to withdraw again

    def _settle_later(self, op):
        async def settle():
            while True:
                outcome, _ = await self._settle(op, 60.0)
                if outcome != UNKNOWN:
                    return
                await asyncio.sleep(1.0)     # no quorum in sight: look again shortly
        task = asyncio.ensure_future(settle())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def change_membership(self, kind, addr, timeout=30.0):
        """Add or remove one Raft member; PySyncObj allows one change at a time."""
        fut, callback = self._bridge()
        change = self.sync.addNodeToCluster if kind == "add" else self.sync.removeNodeFromCluster
        change(addr, callback=callback)
        what = "addition" if kind == "add" else "removal"
        try:
            _, err = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise ShoutdError("the cluster did not commit the %s of %s within %gs: %s"
                              % (what, addr, timeout, self.no_quorum_message()), UNAVAILABLE) from None
        if err != FAIL_REASON.SUCCESS:
            why = _REFUSED.get(err) or _UNKNOWN.get(err) or "Raft error %s" % err
            raise ShoutdError("cannot commit the %s of %s: %s" % (what, addr, why), UNAVAILABLE)

    async def register(self, op):
        """Commit `op` (this host's registration) through the leader, then mark the state caught up."""
        self.caught_up.clear()
        value = await self.submit(op)
        self.caught_up.set()
        self._on_change()
        return value

    async def rebuild(self, members):
        """Drop this node's cluster and start again as a member of `members` (see join.py)."""
        self.caught_up.clear()
        self._rebuilding = True
        try:
            self.sync.destroy()
            host, port = self.self_addr.rsplit(":", 1)
            deadline = time.monotonic() + 15
            # The old tick thread may still write the journal it is about to lose.
            while self.sync.tick_thread_alive() or not port_is_free(host, int(port)):
                if time.monotonic() > deadline:
                    raise ShoutdError("the Raft port %s stayed busy after leaving the old cluster" % self.self_addr)
                await asyncio.sleep(0.1)  # the old node is stopping and releasing the port
            journal.remove_files(*self._files)
            self._build(members)
        finally:
            self._rebuilding = False
        self.loop.call_soon(self._status_moved)

    def _ensure_attached(self):
        """The daemon attaches once; a bare node (tests, the benchmark) attaches to the running loop."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            self.attach(loop, self._on_change)

    def destroy(self, wait=5.0):
        """Stop the tick thread and wait (a bounded time) until it has: it may still write the journal."""
        for task in list(self._settling):
            task.cancel()
        self.sync.destroy()
        if threading.current_thread() is not self._tick_thread:
            deadline = time.monotonic() + wait
            while self.sync.tick_thread_alive() and time.monotonic() < deadline:
                time.sleep(0.01)  # PySyncObj's thread ends at its next tick


def check_port_free(host, port):
    """Fail early and clearly: PySyncObj would retry a busy port forever."""
    if not port_is_free(host, port):
        raise ShoutdError("cannot listen for Raft on %s:%d: it is in use or not an address of this host; set "
                          "raft_port in shoutd.conf or advertise an address of this host" % (host, port))


def port_is_free(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()
