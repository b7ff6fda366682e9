"""Start this daemon again in place: same PID, same command line, the sockets systemd passed.

A host that joins as a replica (roles.py) stops being a Raft member: its
PySyncObj, journal and tick thread go, and a replica's control plane comes.
Every part of the daemon holds its control plane from the start, so the
clean way to change it is the way the daemon starts: exec it again, and let
main() read members.json.  The PID stays, so systemd (Type=notify, the
watchdog) sees the same service; the plugin and managed sockets that systemd
passed are handed on at the same descriptors, because aiohttp closes its
copies on the way out.  The kernel's data plane is untouched, as on any
restart.
"""

import logging
import os
import sys
from typing import Any, Dict

log = logging.getLogger(__name__)

_FIRST_FD = 3                 # sd_listen_fds(3): passed sockets start here
_kept: Dict[str, Any] = {"env": {}, "fds": []}


def keep_activation(count):
    """Called as the passed sockets are taken: keep duplicates and the variables for a later exec."""
    _kept["env"] = {var: os.environ[var] for var in ("LISTEN_FDS", "LISTEN_FDNAMES") if var in os.environ}
    _kept["fds"] = [os.dup(_FIRST_FD + i) for i in range(count)]


def again():
    """Replace this process with a fresh start of the same command.  Never returns."""
    for i, fd in enumerate(_kept["fds"]):
        os.dup2(fd, _FIRST_FD + i, inheritable=True)
    if _kept["fds"]:
        os.environ.update(_kept["env"], LISTEN_PID=str(os.getpid()))
    log.info("starting again in place: %s", " ".join(sys.orig_argv))
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execv(sys.executable, sys.orig_argv)
