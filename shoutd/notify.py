"""systemd notification: READY=1 once the node can serve, STATUS=, WATCHDOG=1.

READY=1 waits until the plugin socket serves and this host's copy of the
state is known to be current (RaftNode.caught_up), so `systemctl start
shoutd` returns when Docker calls can succeed, not merely when the process
runs.  The watchdog means the whole daemon is alive: WATCHDOG=1 is sent from
the event loop, and only while the Raft tick thread is alive and ticking.  A
wedged loop or a wedged Raft thread stops the pings and systemd restarts us.
A host that stopped applying the cluster's log (an older release than the
cluster runs, see state/ops.py) is ready too: it serves its status and says
what to do, and restarting it would not help.
Without NOTIFY_SOCKET (run by hand) every call does nothing.
"""

import asyncio
import logging
import os

import sdnotify

log = logging.getLogger(__name__)


def describe(raft, caught_up):
    """One line for `systemctl status`: who leads, who is connected."""
    if raft.role == "halted":
        return "stopped applying the cluster's log: upgrade this host (shoutdctl status says why)"
    if raft.leader is None:
        return "waiting for a Raft leader (%d members configured)" % len(raft.nodes)
    connected = sum(1 for s in raft.nodes.values() if s != "disconnected")
    text = "leader %s, %d of %d members connected, term %s" % (raft.leader, connected, len(raft.nodes), raft.term)
    if not raft.has_quorum:
        text += ", no quorum"
    elif not caught_up:
        text += ", catching up"
    return text


class Notifier:
    def __init__(self):
        self._sd = sdnotify.SystemdNotifier()
        self._last = None
        self.serving = False      # set once the plugin socket serves: READY=1 waits for it too
        self.ready_sent = False
        self._unhealthy = None

    def _send(self, text):
        self._sd.notify(text)

    def _watchdog_period(self):
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if not usec or os.environ.get("WATCHDOG_PID") not in (None, str(os.getpid())):
            return None
        return usec / 2e6

    def waiting(self, text):
        """Before the event loop runs: say what we wait for, once per change."""
        if text != self._last:
            self._last = text
            self._send("STATUS=" + text)
            log.info("%s", text)
        if self._watchdog_period():
            self._send("WATCHDOG=1")

    def status(self, raft, caught_up):
        """Called on every Raft change and by run(): READY=1 as soon as it is true."""
        text = describe(raft, caught_up)
        if text != self._last:
            self._last = text
            self._send("STATUS=" + text)
        if self.serving and not self.ready_sent and (raft.role == "halted" or caught_up and raft.leader is not None):
            self.ready_sent = True
            self._send("READY=1")
            log.info("ready: %s", text)

    def ping(self, health):
        """WATCHDOG=1, unless `health()` names a problem."""
        problem = health()
        if problem is not None:
            if problem != self._unhealthy:
                log.error("not feeding the watchdog: %s", problem.text)
            self._unhealthy = problem
            return False
        if self._unhealthy is not None:
            log.info("the Raft thread ticks again")
            self._unhealthy = None
        self._send("WATCHDOG=1")
        return True

    async def run(self, raft, stopping):
        """Until `stopping`: STATUS= and READY=1 for `raft` (a RaftNode), WATCHDOG=1 while it is healthy."""
        period = self._watchdog_period()
        self.serving = True
        while not stopping.is_set():
            self.status(raft.status, raft.caught_up.is_set())
            if period:
                self.ping(raft.health)
            # Until READY=1, look often: it is sent as soon as it is true.  After,
            # half the watchdog period, at most 1 s.
            await asyncio.sleep(min(period or 1.0, 1.0) if self.ready_sent else 0.2)

    def stopping(self):
        self._send("STOPPING=1")
