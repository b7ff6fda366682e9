"""What every test tier shares: running commands, waiting on conditions, free ports.

Waits poll a real condition with a deadline and say what they waited for;
no test synchronises on a fixed sleep.
"""

import asyncio
import socket
import subprocess
import time


def sh(cmd, check=True, timeout=120, **kw):
    """Run a command (a string goes through the shell); raise with its output if it fails."""
    res = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (cmd, res.returncode, res.stdout[-3000:], res.stderr[-3000:]))
    return res


def wait_for(pred, timeout=30.0, interval=0.2, what=None):
    """Poll `pred` until it returns something true; return that, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %gs waiting for %s"
                                 % (timeout, what or getattr(pred, "__name__", pred)))
        time.sleep(interval)


async def until(pred, timeout=15.0, interval=0.05, what=None):
    """wait_for, on an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %gs waiting for %s"
                                 % (timeout, what or getattr(pred, "__name__", pred)))
        await asyncio.sleep(interval)


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
