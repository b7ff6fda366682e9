"""PySyncObj's TCP transport, hardened against strangers on the Raft port.

Every connection is Fernet-authenticated with the cluster secret before any
message is unpickled, but PySyncObj reads its frames first and trusts them:
- a 4-byte length of 2 GiB makes it buffer whatever follows, copying the
  buffer on every read, with no limit;
- a connection that never speaks is never closed;
- when accept() fails (EMFILE: out of descriptors) its server unbinds the
  port for good, cutting the host off from the cluster.

GuardedTransport closes those holes without touching the wire format:
- Accepted sockets are wrapped in FrameGuard, which follows the frame
  lengths as bytes arrive and resets a connection that announces a frame
  larger than UNAUTHENTICATED_FRAME (before it has sent one valid frame) or
  MAX_FRAME (after).  Valid frames are far smaller.
- A connection that has not authenticated within AUTH_TIMEOUT is closed,
  and at most MAX_PENDING may wait at once (the oldest goes first).
- GuardedServer never unbinds on an accept error: it sheds a waiting
  connection, pauses accepting for a moment, and carries on.

And fixes to PySyncObj's Raft (0.3.17 included), in `_raft_fixes`.  Its
leader sends several append-entries messages in a row to a follower and, on
each answer, sets the follower's nextIndex to the index in that answer,
whichever message it answers:
- An acknowledgement of an earlier message moves nextIndex backwards; the
  leader sends entries again and the follower deletes and re-appends entries
  it holds.  A crash in between loses entries it acknowledged (our fault
  tests saw an allocation handed out twice after every host was killed at
  once).
- After a rejection, the follower's answers to the messages sent behind the
  rejected one ("I do not have that far: start at my last index + 1") move
  nextIndex forward again, undoing the step back.  A follower whose log ends
  in entries of an older term then never converges (seen after a leader was
  paused: the leader stepped back one entry, the stale answers stepped it
  forward again, forever).
As in Raft, an acknowledgement here only ever moves nextIndex forward and a
rejection (reset) only ever back.
- A follower raises its commit index to min(leader's, its own last index)
  on every append-entries message, even one that checked nothing (a
  snapshot chunk, or "no snapshot ready yet"), so it can apply stale
  entries the leader never confirmed.  Such messages may not move it here,
  except the last chunk of a snapshot, which replaces the log anyway.

It also serves shoutd's needs from the same place:
- a keepalive on every member connection each KEEPALIVE seconds.  PySyncObj
  closes a connection that has read nothing for its connection timeout, and
  checks that timeout first when the next message comes or goes, dropping
  that message.  Followers speak to each other only in elections, so their
  link was always stale by then and the first pre-vote was lost (a failover
  took a second election timeout: 3.3 s instead of 1 to 2).  Keepalives are
  consumed here: they are not Raft, so they count as nothing in `heard`;
- `heard` records when each member last sent a message, for an honest
  quorum (PySyncObj's hasQuorum only counts open TCP connections);
- every outgoing message passes the durability rules (durability.py): an
  acknowledgement claims only what is on disk, and nothing leaves while the
  term or vote is not; the journal's flusher wakes the tick thread through a
  pipe when the disk has caught up, and what was held goes out then;
- pre-votes, and vote requests that a follower ignores (election.py);
- the join request, a utility message that only holders of the secret can
  send (see join.py).
"""

import errno
import functools
import logging
import socket
import struct
import time

from pysyncobj.pipe_notifier import PipeNotifier
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

log = logging.getLogger(__name__)

MAX_FRAME = 8 << 20                 # PySyncObj sends at most ~64 KiB of entries per message
UNAUTHENTICATED_FRAME = 16 << 10    # a handshake or utility message is a few hundred bytes
AUTH_TIMEOUT = 5.0                  # seconds to complete the handshake
MAX_PENDING = 64                    # unauthenticated connections at once
ACCEPT_PAUSE = 0.5                  # seconds without accepting after an accept error
KEEPALIVE = 1.0                     # seconds between keepalives: far within any connection timeout
# A dict of a type PySyncObj does not know: older releases pass it on to
# PySyncObj, which ignores it.
KEEPALIVE_MESSAGE = {"type": "shoutd_keepalive"}
_FRAME_HEADER = struct.Struct("i")  # PySyncObj's length prefix: native signed int


class FrameGuard:
    """A socket that resets its connection when a frame is announced too large.

    PySyncObj's TcpConnection calls recv, send, fileno, setsockopt,
    getsockopt and close; everything but recv passes straight through.
    """

    def __init__(self, sock):
        self._sock = sock
        self.authenticated = False
        self._header = b""
        self._left = 0              # bytes of the current frame still to come

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def recv(self, size):
        data = self._sock.recv(size)
        self._follow(data)
        return data

    def _follow(self, data):
        view, pos = memoryview(data), 0
        while pos < len(view):
            if self._left:
                step = min(self._left, len(view) - pos)
                self._left -= step
                pos += step
                continue
            need = _FRAME_HEADER.size - len(self._header)
            self._header += bytes(view[pos:pos + need])
            pos += need
            if len(self._header) < _FRAME_HEADER.size:
                return
            (length,), self._header = _FRAME_HEADER.unpack(self._header), b""
            limit = MAX_FRAME if self.authenticated else UNAUTHENTICATED_FRAME
            if not 0 < length <= limit:
                raise OSError(errno.EMSGSIZE, "Raft frame of %d bytes refused (limit %d)" % (length, limit))
            self._left = length


def _raft_fixes(sync, handle, node, message):
    """PySyncObj's message handler, with the two fixes of the module note."""
    if not isinstance(message, dict):
        return handle(node, message)
    if message.get("type") == "append_entries" and "prevLogIdx" not in message:
        serialized = message.get("serialized")
        if not (serialized and serialized[2]):          # not the last chunk of a snapshot
            message = dict(message, commit_index=0)
    answer = message.get("type") == "next_node_idx" and (message.get("success") or message.get("reset"))
    next_index = sync._SyncObj__raftNextIndex if answer else None
    before = next_index.get(node) if answer else None
    handle(node, message)
    if before is None or next_index is not sync._SyncObj__raftNextIndex or node not in next_index:
        return
    after = next_index[node]
    if message.get("reset"):
        next_index[node] = min(before, after)     # a rejection only steps back
    else:
        next_index[node] = max(before, after)     # an acknowledgement only steps forward


class GuardedServer:
    """Listens on the Raft port; hands each accepted socket, guarded, to the transport."""

    def __init__(self, poller, host, port, on_connection, connection_args):
        self._poller = poller
        self._address = (host, int(port))
        self._on_connection = on_connection
        self._args = connection_args
        self._sock = None
        self._paused_until = 0.0

    @property
    def bound(self):
        return self._sock is not None

    def bind(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind(self._address)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._watch()

    def _watch(self):
        self._poller.subscribe(self._sock.fileno(), self._on_event, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def unbind(self):
        if self._sock is not None:
            try:
                self._poller.unsubscribe(self._sock.fileno())
            except (KeyError, ValueError, OSError):
                pass
            self._sock.close()
            self._sock = None

    def tick(self):
        """Resume accepting after a pause."""
        if self._sock is not None and self._paused_until and time.monotonic() >= self._paused_until:
            self._paused_until = 0.0
            self._watch()

    def _on_event(self, descr, event):
        for _ in range(32):            # accept a burst, then let the rest of the tick run
            try:
                sock, _ = self._sock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                # Out of descriptors or memory: never give up the port.  Stop
                # listening for a moment (the poller is level-triggered and
                # would spin) and let the transport shed a waiting stranger.
                log.warning("Raft port: accept failed (%s); pausing %.1fs", e.strerror, ACCEPT_PAUSE)
                self._on_connection(None, None)
                self._poller.unsubscribe(self._sock.fileno())
                self._paused_until = time.monotonic() + ACCEPT_PAUSE
                return
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                guard = FrameGuard(sock)
                conn = TcpConnection(socket=guard, **self._args)
            except OSError:
                sock.close()
                continue
            self._on_connection(conn, guard)


class GuardedTransport(TCPTransport):
    """TCPTransport with the guards above.

    PySyncObj builds its transport itself, from a class; `with_hooks` makes
    the class that carries one node's hooks (durability, elections, the join request).
    """

    hooks = None

    @classmethod
    def with_hooks(cls, hooks):
        return type("GuardedTransport", (cls,), {"hooks": hooks})

    def __init__(self, syncObj, selfNode, otherNodes):
        self._pending = {}           # unauthenticated incoming connection -> (accepted at, its guard)
        self.heard = {}              # member id -> time.monotonic() of its last Raft message
        self._kept_alive = 0.0       # when keepalives last went out
        super().__init__(syncObj, selfNode, otherNodes)
        if self.hooks is not None:
            self.hooks.transport = self
            # The journal's flusher thread writes to this pipe; the tick
            # thread, polling it, then sends what waited for the disk.
            self.hooks.wake = PipeNotifier(syncObj._poller, self._release).notify

    # -- the server --------------------------------------------------------

    def _createServer(self):
        conf = self._syncObj.conf
        host, port = (conf.bindAddress or self._selfNode.address).rsplit(":", 1)
        self._server = GuardedServer(self._syncObj._poller, host, port, self._accepted, dict(
            poller=self._syncObj._poller, timeout=conf.connectionTimeout, sendBufferSize=conf.sendBufferSize,
            recvBufferSize=conf.recvBufferSize, keepalive=conf.tcp_keepalive))

    def _accepted(self, conn, guard):
        if conn is None:             # accept failed: make room
            self._shed(1)
            return
        if len(self._pending) >= MAX_PENDING:
            self._shed(len(self._pending) - MAX_PENDING + 1)
        self._pending[conn] = (time.monotonic(), guard)
        self._onNewIncomingConnection(conn)

    def _shed(self, count):
        for conn in sorted(self._pending, key=lambda c: self._pending[c][0])[:count]:
            self._drop(conn, "too many connections waiting to authenticate")

    def _drop(self, conn, why):
        self._pending.pop(conn, None)
        log.debug("Raft port: closing a connection: %s", why)
        conn.disconnect()
        self._unknownConnections.discard(conn)

    def _onTick(self):
        super()._onTick()
        if self._server is not None and not self._server.bound and self._ready:
            self._ready = False           # bind again at the next tick
        if self._server is not None:
            self._server.tick()
        self._release()
        self._keep_alive()
        if self._pending:
            deadline = time.monotonic() - AUTH_TIMEOUT
            for conn, (since, _) in list(self._pending.items()):
                if since < deadline:
                    self._drop(conn, "no authentication within %gs" % AUTH_TIMEOUT)

    def _keep_alive(self):
        now = time.monotonic()
        if now - self._kept_alive < KEEPALIVE:
            return
        self._kept_alive = now
        for node, conn in list(self._connections.items()):
            if conn.state == CONNECTION_STATE.CONNECTED:
                self._deliver(node, KEEPALIVE_MESSAGE)

    # -- incoming messages ---------------------------------------------------

    def setOnMessageReceivedCallback(self, callback):
        if callback is not None:
            callback = functools.partial(self._on_message, functools.partial(_raft_fixes, self._syncObj, callback))
        super().setOnMessageReceivedCallback(callback)

    def _on_message(self, handle, node, message):
        if self.hooks is not None and isinstance(message, dict) and self.hooks.elections.on_message(
                self._syncObj, node, message, self.heard, self.send):
            return
        handle(node, message)

    def _onIncomingMessageReceived(self, conn, message):
        # Any message that reached here was decrypted with the secret.
        _, guard = self._pending.pop(conn, (None, None))
        if guard is not None:
            guard.authenticated = True
        super()._onIncomingMessageReceived(conn, message)

    def _onUtilityMessage(self, conn, message):
        """shoutd's utility messages (join.py): handler(args, reply, hung_up), on the tick thread.

        As PySyncObj's own, plus `hung_up()`, true once the asker closed the
        connection: a host that leaves its cluster after answering a join must
        not close it first, as PySyncObj's client loses a reply that arrives
        together with the hang-up.
        """
        name = message[0] if message and isinstance(message[0], str) else None
        if name is None:
            self._drop(conn, "a malformed utility message")     # PySyncObj's own would fail on it
            return True
        handler = self.hooks.utility_messages.get(name) if self.hooks is not None else None
        if handler is None:
            return super()._onUtilityMessage(conn, message)
        reply = functools.partial(self._utilityCallback, conn=conn, args=[name.upper()] + message[1:])
        try:
            handler(message[1:], reply, lambda: conn.state == CONNECTION_STATE.DISCONNECTED)
        except Exception as e:  # noqa: BLE001 - as PySyncObj does: the asker gets the error, the tick goes on
            conn.send(str(e))
        return True

    def _onDisconnected(self, conn):
        self._pending.pop(conn, None)
        super()._onDisconnected(conn)

    def _onMessageReceived(self, node, message):
        if message == KEEPALIVE_MESSAGE:
            return                   # it did its work by arriving: the connection read something
        self.heard[node.id] = time.monotonic()
        super()._onMessageReceived(node, message)

    # -- outgoing ------------------------------------------------------------

    def send(self, node, message):
        if self.hooks is None:
            return super().send(node, message)
        sent = True
        for to, msg in self.hooks.durability.outgoing(node, message, self._syncObj.raftCurrentTerm):
            sent = self._deliver(to, msg) and sent
        return sent

    def _deliver(self, node, message):
        return super().send(node, message)

    def _release(self):
        if self.hooks is not None:
            for to, msg in self.hooks.durability.release(self._syncObj.raftCurrentTerm):
                self._deliver(to, msg)
