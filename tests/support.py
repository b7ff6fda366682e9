"""What every test tier shares: running commands, waiting on conditions, free ports.

Waits poll a real condition with a deadline and say what they waited for;
no test synchronises on a fixed sleep.
"""

import asyncio
import json
import re
import socket
import subprocess
import time


def sh(cmd, check=True, timeout=120, **kw):
    """Run a command (a string goes through the shell); raise with its output if it fails."""
    res = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (cmd, res.returncode, res.stdout[-3000:], res.stderr[-3000:]))
    return res


def _timed_out(pred, timeout, what):
    return AssertionError("timed out after %gs waiting for %s" % (timeout, what or getattr(pred, "__name__", pred)))


def wait_for(pred, timeout=30.0, interval=0.2, what=None):
    """Poll `pred` until it returns something true; return that, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(pred, timeout, what)
        time.sleep(interval)                 # the poll interval


async def until(pred, timeout=15.0, interval=0.05, what=None):
    """wait_for, on an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(pred, timeout, what)
        await asyncio.sleep(interval)        # the poll interval


def free_ports(n, host="127.0.0.1"):
    """`n` distinct free TCP ports (all held open while choosing, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def docker_id(name):
    """A Docker-style id (64 hex digits) standing for `name`, stable across calls."""
    import hashlib
    return hashlib.sha256(name.encode()).hexdigest()


_LOSS = re.compile(r"(\d+)/\s*(\d+) \(")


def iperf_loss(report):
    """(lost, total) from an iperf UDP server's output: its largest report (the final one)."""
    reports = [(int(a), int(b)) for a, b in _LOSS.findall(report)]
    assert reports, "no iperf report in:\n" + report[-2000:]
    return max(reports, key=lambda r: r[1])


def busctl_json(out):
    """busctl --json=short's answer to a call returning a{sv}, as a plain dict."""
    return {k: v["data"] for k, v in json.loads(out)["data"][0].items()}


_SUMMARY = re.compile(r"\s0\.0+\s*-\s*([\d.]+) sec.*?(\d+)/\s*(\d+) \(")


def iperf_summary(report, seconds):
    """(lost, total) of an iperf UDP server's closing summary of a `seconds`-long stream, or None yet."""
    for end, lost, total in _SUMMARY.findall(report):
        if float(end) >= 0.9 * seconds:
            return int(lost), int(total)
    return None


def iperf_listening(report):
    return "listening" in report


class Capture:
    """tcpdump (argv ends with its filter), read line by line as it prints; started once it listens."""

    def __init__(self, argv):
        import threading
        self.lines = []
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = ""
        while "listening on" not in said:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError("tcpdump ended before it listened: %s" % said)
            said += line
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                        daemon=True)
        self._reader.start()

    def count(self, address):
        """Packets (inner ones too, for VXLAN) sent to `address`."""
        return sum(1 for line in list(self.lines) if "> %s." % address in line or "> %s:" % address in line)

    def times(self, address):
        """When packets to `address` were seen (tcpdump -tt): an inner VXLAN packet has the outer line's time."""
        stamps, stamp = [], None
        for line in list(self.lines):
            head = line.split(" ", 1)[0]
            if head.replace(".", "", 1).isdigit():
                stamp = float(head)
            if stamp is not None and ("> %s." % address in line or "> %s:" % address in line):
                stamps.append(stamp)
        return stamps

    def first(self, text):
        """The time of the first line that contains `text` (case-insensitive), or None."""
        return next((float(l.split(" ", 1)[0]) for l in list(self.lines) if text.lower() in l.lower()), None)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        return "".join(self.lines)


_JOIN = """
import socket, sys, time
held = []
for group in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(sys.argv[1]))
    held.append(s)
print("joined", flush=True)
time.sleep(3600)
"""


def join_groups(netns, local_ip, *groups, igmp=3):
    """A process in `netns` that joins `groups` on the interface with `local_ip` and stays (kill it to leave)."""
    import sys
    if igmp == 2:
        sh("ip netns exec %s sysctl -qw net.ipv4.conf.all.force_igmp_version=2" % netns)
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", _JOIN, local_ip] + list(groups),
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "joined":
        proc.kill()
        raise AssertionError("could not join %s in %s" % (", ".join(groups), netns))
    return proc
