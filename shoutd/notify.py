"""systemd notification: READY=1 once the node can serve, STATUS=, WATCHDOG=1.

READY=1 waits for a leader, so `systemctl start shoutd` returns when Docker
calls can succeed, not merely when the process runs.  The watchdog is pinged
from the event loop itself, so a wedged loop stops the pings and systemd
restarts us.  Without NOTIFY_SOCKET (run by hand) every call does nothing.
"""

import asyncio
import logging
import os

import sdnotify

log = logging.getLogger(__name__)


def describe(status):
    if status["leader"] is None:
        return "waiting for a Raft leader (%d members configured)" % len(status["nodes"])
    members = sum(1 for s in status["nodes"].values() if s != "disconnected")
    return "leader %s, %d of %d members connected, term %s" % (
        status["leader"], members, len(status["nodes"]), status["term"])


class Notifier:
    def __init__(self):
        self._sd = sdnotify.SystemdNotifier()
        self._last = None
        self.serving = False      # set once the plugin socket serves: READY=1 waits for it too
        self.ready = False

    def _send(self, text):
        self._sd.notify(text)

    def waiting(self, text):
        """Before the event loop runs: say what we wait for, once per change."""
        if text != self._last:
            self._last = text
            self._send("STATUS=" + text)
            log.info("%s", text)
        if os.environ.get("WATCHDOG_USEC") and os.environ.get("WATCHDOG_PID") in (None, str(os.getpid())):
            self._send("WATCHDOG=1")

    def status(self, status):
        """Called on every Raft change and by the loop below: READY=1 as soon as it is true."""
        text = describe(status)
        if text != self._last:
            self._last = text
            self._send("STATUS=" + text)
        if self.serving and not self.ready and status["ready"] and status["leader"] is not None:
            self.ready = True
            self._send("READY=1")
            log.info("ready: %s", text)

    async def until_ready(self, status_source, stopping):
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if os.environ.get("WATCHDOG_PID") not in (None, str(os.getpid())):
            usec = 0
        period = usec / 2e6 if usec else None
        self.serving = True
        while not stopping.is_set():
            self.status(status_source())
            if period:
                self._send("WATCHDOG=1")
            await asyncio.sleep(min(period or 1.0, 1.0) if self.ready else 0.2)

    def stopping(self):
        self._send("STOPPING=1")
