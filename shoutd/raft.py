"""The Raft cluster: PySyncObj wrapped so the rest of shoutd never touches it.

Why a wrapper: PySyncObj has sharp edges (see ../shared/LIBRARIES.md) that
must be handled in exactly one place.
- Its wire format is pickle.  We always set `password`, so every connection is
  Fernet-encrypted and authenticated before anything is unpickled; we bind
  the Raft port to this node's own address, never 0.0.0.0.
- Replicated methods run on PySyncObj's tick thread and must never raise; the
  single replicated method, `apply`, hands the op to the pure ClusterState.
- Results arrive on the tick thread; they are passed to asyncio with
  call_soon_threadsafe, so handlers can simply `await raft.submit(op)`.
- The tick thread ends when the thread that built the SyncObj ends, so the
  daemon builds it on the main thread, which then runs the event loop.
"""

import asyncio
import copy
import errno
import logging
import os
import socket
import threading
import time

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.transport import TCPTransport
from pysyncobj.utility import TcpUtility, UtilityException

from .errors import CONFLICT, UNAVAILABLE, ShoutdError
from .state import ClusterState, empty

log = logging.getLogger(__name__)

_FAILURES = {
    FAIL_REASON.QUEUE_FULL: "the Raft command queue is full; try again shortly",
    FAIL_REASON.MISSING_LEADER: "the cluster has no leader (a majority of members is unreachable)",
    FAIL_REASON.DISCARDED: "the command was discarded by a leader change; try again",
    FAIL_REASON.NOT_LEADER: "the leader changed before the command committed; try again",
    FAIL_REASON.LEADER_CHANGED: "the leader changed before the command committed; try again",
    FAIL_REASON.REQUEST_DENIED: "the cluster refused the request",
}


# A command that changes nothing; see RaftNode.submit for why it exists.
NUDGE = {"op": "nudge"}


class StateConsumer(SyncObjConsumer):
    """Holds the ClusterState inside PySyncObj so it is logged and snapshotted."""

    def __init__(self, on_change):
        self._lock = threading.Lock()
        self._on_change = on_change
        self._state = ClusterState()
        super().__init__()

    @replicated
    def apply(self, op):
        if op == NUDGE:
            return None
        with self._lock:
            result = copy.deepcopy(self._state.apply(op))
        if "error" not in result:
            self._notify()
        return result

    def snapshot(self):
        with self._lock:
            return ClusterState(copy.deepcopy(self._state.data))

    def _notify(self):
        try:
            self._on_change()
        except Exception:  # noqa: BLE001 - we are on the tick thread
            log.exception("bug: state change callback failed")

    # Snapshots (log compaction, a new node catching up) carry only the data.
    def _serialize(self):
        with self._lock:
            return copy.deepcopy(self._state.data)

    def _deserialize(self, data):
        with self._lock:
            self._state = ClusterState(data if isinstance(data, dict) else empty())
        self._notify()


def check_port_free(host, port):
    """Fail early and clearly: PySyncObj would retry a busy port forever."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError as e:
        reason = "it is in use" if e.errno == errno.EADDRINUSE else e.strerror
        raise ShoutdError("cannot listen for Raft on %s:%d: %s; set raft_port in shoutd.conf "
                          "or advertise an address of this host" % (host, port, reason)) from None
    finally:
        s.close()


JOIN = "shoutd_join"
JOIN_GRACE = 1.0        # seconds between answering a join request and acting on it


class RaftNode:
    """One member of the Raft cluster.  Build on the main thread."""

    def __init__(self, self_addr, peer_addrs, secret, journal=None, dump=None):
        self.self_addr = self_addr
        self.secret = secret
        self._journal, self._dump = journal, dump
        self._on_change = lambda: None
        self.on_join = None            # set by the daemon: called on the loop with the new members
        self.loop = None
        host, port = self_addr.rsplit(":", 1)
        check_port_free(host, int(port))
        self._build(peer_addrs)

    def _build(self, peer_addrs):
        self.consumer = StateConsumer(self._changed)
        conf = SyncObjConf(
            password=self.secret,
            bindAddress=self.self_addr,
            dynamicMembershipChange=True,
            journalFile=self._journal,
            fullDumpFile=self._dump,
            useFork=False,             # forking a threaded process can deadlock
            commandsWaitLeader=True,
            # Every container start and stop commits several commands, so
            # commit latency is what `docker run` feels.  Send each command
            # at once (no batching) and wake the tick thread when one is
            # queued; the no-op in submit() then commits it in one round trip.
            # Ticks and heartbeats keep PySyncObj's 50 ms defaults: commit
            # latency no longer depends on them.
            appendEntriesUseBatch=False,
            onStateChanged=lambda old, new: self._changed(),
            connectionRetryTime=1.0,
            raftMinTimeout=0.4,
            raftMaxTimeout=1.4,
        )
        node = self

        class Transport(TCPTransport):
            """PySyncObj's transport plus one utility message: a join request.

            Utility messages arrive only after the secret-keyed handshake, so
            only a holder of the cluster secret can ask a node to join.
            """
            def __init__(self, *args):
                super().__init__(*args)
                self.setOnUtilityMessageCallback(JOIN, node._on_join_request)

        self.sync = SyncObj(self.self_addr, [p for p in peer_addrs if p != self.self_addr], conf=conf,
                            consumers=[self.consumer], transportClass=Transport)

    def on_change(self, callback):
        """Call `callback` (on the tick thread) after every state or role change."""
        self._on_change = callback

    def _changed(self):
        self._on_change()

    def state(self):
        return self.consumer.snapshot()

    async def submit(self, op, timeout=10.0):
        """Replicate `op`; return its value or raise ShoutdError."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(result, err):
            def settle():
                if not fut.done():
                    fut.set_result((result, err))
            loop.call_soon_threadsafe(settle)

        self.consumer.apply(op, callback=done)
        # PySyncObj's leader counts a follower's ack as one entry short of what
        # the follower holds, so an entry commits only once the next entry or
        # heartbeat has reached the followers.  A no-op right behind the command
        # is that next entry, now rather than at the next heartbeat.
        self.consumer.apply(NUDGE)
        try:
            result, err = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise ShoutdError("the cluster did not commit %s within %gs: %s"
                              % (op.get("op"), timeout, self.quorum_hint()), UNAVAILABLE) from None
        if err != FAIL_REASON.SUCCESS:
            raise ShoutdError("cannot %s: %s" % (op.get("op"), _FAILURES.get(err, "Raft error %s" % err)),
                              UNAVAILABLE)
        if "error" in result:
            raise ShoutdError(result["error"], result["kind"])
        return result["value"]

    def quorum_hint(self):
        st = self.status()
        if st["leader"] is None:
            return "no leader is elected; check that a majority of %d members is up and " \
                   "shares the cluster secret" % (len(st["nodes"]))
        return "leader is %s" % st["leader"]

    def status(self):
        raw = self.sync.getStatus()
        nodes = {self.self_addr: "self"}
        for key, value in raw.items():
            if key.startswith("partner_node_status_server_"):
                nodes[key[len("partner_node_status_server_"):]] = "connected" if value == 2 else "disconnected"
        leader = raw.get("leader")
        return {"self": self.self_addr, "leader": leader.id if leader is not None else None,
                "term": raw.get("raft_term", 0), "has_quorum": bool(raw.get("has_quorum")),
                "ready": self.sync.isReady(), "nodes": nodes,
                "commit_index": raw.get("commit_idx"), "last_applied": raw.get("last_applied")}

    # -- membership ------------------------------------------------------

    def members(self):
        return sorted(self.status()["nodes"])

    async def change_membership(self, kind, addr, timeout=30.0):
        """Add or remove one Raft member; PySyncObj allows one change at a time."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(result, err):
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(err))
        change = self.sync.addNodeToCluster if kind == "add" else self.sync.removeNodeFromCluster
        change(addr, callback=done)
        try:
            err = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise ShoutdError("the cluster did not commit the %s of %s within %gs: %s"
                              % ("addition" if kind == "add" else "removal", addr, timeout,
                                 self.quorum_hint()), UNAVAILABLE) from None
        if err != FAIL_REASON.SUCCESS:
            raise ShoutdError("cannot change membership for %s: %s"
                              % (addr, _FAILURES.get(err, "Raft error %s" % err)), UNAVAILABLE)

    async def ask_to_join(self, addr, members, timeout=10.0):
        """Ask the shoutd at `addr` to leave its one-node cluster and join `members`."""
        def call():
            try:
                return TcpUtility(password=self.secret, timeout=timeout).executeCommand(addr, [JOIN] + members)
            except UtilityException as e:
                return "unreachable: %s" % e
        reply = str(await asyncio.get_running_loop().run_in_executor(None, call))
        if reply.startswith("unreachable"):
            raise ShoutdError("host %s did not accept the join request (%s): is shoutd running there, "
                              "listening on that address, with the same cluster secret?"
                              % (addr, reply.split(": ", 1)[-1]), UNAVAILABLE)
        if reply != "joining":
            raise ShoutdError("host %s refused to join: %s" % (addr, reply), CONFLICT)

    def _on_join_request(self, args, callback):
        """On the tick thread: answer at once, rebuild on the loop."""
        members = [str(a) for a in args]
        if self.self_addr not in members:
            return callback("the member list does not name this host (%s)" % self.self_addr, None)
        if len(self.status()["nodes"]) > 1:
            return callback("%s is already a member of a cluster with %s; remove it there first"
                            % (self.self_addr, ", ".join(n for n in self.members() if n != self.self_addr)), None)
        if self.consumer.snapshot().networks:
            return callback("%s has shoutd networks of its own; remove them before it joins" % self.self_addr,
                            None)
        if self.loop is None or self.on_join is None:
            return callback("%s is not ready to join yet; try again" % self.self_addr, None)
        callback("joining", None)
        # Rebuild only once the asker has read "joining": PySyncObj's client
        # treats a hang-up that arrives with the reply as a lost connection.
        self.loop.call_soon_threadsafe(self.loop.call_later, JOIN_GRACE, self.on_join, members)

    async def rejoin(self, members):
        """Drop this one-node cluster and start again as a member of `members`."""
        log.info("joining the cluster of %s", ", ".join(m for m in members if m != self.self_addr))
        self.sync.destroy()
        host, port = self.self_addr.rsplit(":", 1)
        deadline = time.monotonic() + 15
        while True:
            try:
                check_port_free(host, int(port))
                break
            except ShoutdError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        for f in filter(None, (self._journal, self._dump)):
            for path in (f, f + ".tmp", f + ".meta"):
                if os.path.exists(path):
                    os.unlink(path)
        self._build(members)
        self._changed()

    def destroy(self):
        self.sync.destroy()
