"""systemd integration without a boot: socket activation, sd_notify, the plugin socket's mode."""

import os
import socket
import stat
import time

from ..hostlab import plugin_call
from ..support import wait_for


def test_socket_activation_first_call_starts_the_daemon(world):
    h = world.host()
    sock = os.path.join(h.dir, "activated.sock")
    h.start(world.secret(), wrap=["systemd-socket-activate", "-l", sock], wait=False)
    wait_for(lambda: os.path.exists(sock), timeout=10, interval=0.05, what="the socket " + sock)
    assert not os.path.exists(h.log) or "serving" not in open(h.log).read(), "nothing runs before a call"
    status, reply = plugin_call(sock, "Plugin.Activate")      # this call starts shoutd
    assert status == 200 and reply == {"Implements": ["NetworkDriver", "IpamDriver", "authz"]}
    log = h.wait_log("registered;")
    assert "on the socket passed by systemd" in log
    assert not os.path.exists(os.path.join(h.dir, "plugins/shoutd.sock")), "no second socket of its own"
    status, reply = plugin_call(sock, "IpamDriver.RequestPool", b"{broken")
    assert status == 400 and "not valid JSON" in reply["Err"]


def test_own_socket_is_not_world_writable(world):
    h = world.host().start(world.secret())
    mode = stat.S_IMODE(os.stat(os.path.join(h.dir, "plugins/shoutd.sock")).st_mode)
    assert mode & 0o007 == 0, oct(mode)


def test_notify_ready_status_and_watchdog(world):
    h = world.host()
    path = os.path.join(h.dir, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(1.0)
    h.start(world.secret(), peers=["198.20.0.99"],       # a peer that never comes: no leader yet
            env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, wait=False)
    messages = []

    def collect(seconds):
        end = time.time() + seconds
        while time.time() < end:
            try:
                messages.extend(sock.recv(4096).decode().split("\n"))
            except socket.timeout:
                pass
    collect(4)
    assert any(m.startswith("STATUS=waiting for a Raft leader") for m in messages), messages
    assert "READY=1" not in messages, "not ready without a leader"
    assert "WATCHDOG=1" in messages, "the watchdog is fed while waiting"
    h.stop()

    messages.clear()
    h.start(world.secret("solo"), env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, wait=False)
    collect(4)
    assert "READY=1" in messages, messages
    ready_at = messages.index("READY=1")
    last_status = [m for m in messages[:ready_at] if m.startswith("STATUS=")][-1]
    assert last_status.startswith("STATUS=leader 198.20.0.1:7380"), messages   # what systemctl shows at READY
    assert messages[ready_at:].count("WATCHDOG=1") >= 2
    h.stop()
    collect(1)
    assert "STOPPING=1" in messages
